"""The published surface of ``jeevesagent.runtime`` (DESIGN §2): names, import paths, signatures,
optional dependencies and the error hierarchy."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from inspect import Parameter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import jeevesagent.runtime as rt_pkg
from jeevesagent.runtime import (
    InMemoryJournalStore,
    InProcRuntime,
    InProcSession,
    JournalCorruptError,
    JournaledRuntime,
    JournaledSession,
    JournalEntry,
    JournalMismatchError,
    JournalStore,
    PostgresJournalStore,
    PostgresRuntime,
    RuntimeJournalError,
    SessionBusyError,
    SqliteJournalStore,
    SqliteRuntime,
    StoreClosedError,
    StoreError,
    ValueEncodingError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_repo_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports the package from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PUBLISHED_CLASSES = {
    "InProcRuntime",
    "InProcSession",
    "JournaledRuntime",
    "JournaledSession",
    "JournalEntry",
    "JournalStore",
    "InMemoryJournalStore",
    "SqliteJournalStore",
    "SqliteRuntime",
    "PostgresJournalStore",
    "PostgresRuntime",
}

PUBLISHED_SUBMODULES: dict[str, set[str]] = {
    "inproc": {"InProcRuntime", "InProcSession"},
    "journal": {
        "JournalEntry",
        "JournalStore",
        "InMemoryJournalStore",
        "SqliteJournalStore",
        "PostgresJournalStore",
    },
    "journaled": {"JournaledRuntime", "JournaledSession"},
    "sqlite": {"SqliteJournalStore", "SqliteRuntime"},
    "postgres": {"PostgresJournalStore", "PostgresRuntime"},
}

ERROR_CLASSES: list[type[RuntimeJournalError]] = [
    RuntimeJournalError,
    SessionBusyError,
    JournalMismatchError,
    JournalCorruptError,
    rt_pkg.JournalIntegrityError,
    ValueEncodingError,
    StoreError,
    StoreClosedError,
    rt_pkg.StepTimeoutError,
    rt_pkg.StepFailedError,
    rt_pkg.InvalidNameError,
    rt_pkg.SessionCancelledError,
    rt_pkg.StreamFailedError,
]

RUNTIME_CLASSES: list[type[Any]] = [InProcRuntime, JournaledRuntime, SqliteRuntime, PostgresRuntime]


# Dunder names the package exports on purpose (public_names leaves every underscored name out).
EXPORTED_DUNDERS = {"__version__"}


def public_names(module: ModuleType) -> set[str]:
    """Names a user sees in ``dir(module)``: not underscored, not a submodule."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), ModuleType)
    }


# -- names ----------------------------------------------------------------------------------------


def test_all_is_a_tuple_without_duplicates() -> None:
    assert isinstance(rt_pkg.__all__, tuple)
    assert len(set(rt_pkg.__all__)) == len(rt_pkg.__all__)


def test_all_matches_the_public_names_of_the_package() -> None:
    exported = public_names(rt_pkg) | (EXPORTED_DUNDERS & set(dir(rt_pkg)))
    declared = set(rt_pkg.__all__)
    assert not exported - declared, f"public but missing from __all__: {exported - declared}"
    assert not declared - exported, f"in __all__ but not defined: {declared - exported}"


def test_every_name_in_all_resolves() -> None:
    for name in rt_pkg.__all__:
        assert getattr(rt_pkg, name) is not None, name


def test_version_is_the_installed_distributions() -> None:
    import jeevesagent

    assert "__version__" in rt_pkg.__all__
    assert (
        rt_pkg.__version__ == jeevesagent.__version__ == importlib.metadata.version("jeevesagent")
    )
    assert "__version__" in jeevesagent.__all__


def test_version_falls_back_when_the_package_is_not_installed(tmp_path: Path) -> None:
    # A copy of the source tree, imported with no site-packages: no distribution metadata at all.
    shutil.copytree(REPO_ROOT / "jeevesagent", tmp_path / "jeevesagent")
    code = "import jeevesagent, sys; print(jeevesagent.__version__, 'anyio' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-S", "-E", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0+unknown", "False"]


def test_the_mit_license_ships_in_the_package_metadata() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 jeevesagent.runtime developers\n")
    meta = importlib.metadata.metadata("jeevesagent")
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in (meta.get_all("License-File") or [])


def test_the_eleven_published_classes_are_exported() -> None:
    assert len(PUBLISHED_CLASSES) == 11
    assert set(rt_pkg.__all__) >= PUBLISHED_CLASSES
    for name in PUBLISHED_CLASSES:
        assert inspect.isclass(getattr(rt_pkg, name)), name


def test_runtime_names() -> None:
    assert InProcRuntime.name == "inproc"
    assert JournaledRuntime.name == "journaled"
    assert SqliteRuntime.name == "sqlite"
    assert PostgresRuntime.name == "postgres"


def test_bundled_runtimes_are_journaled_runtimes() -> None:
    assert issubclass(SqliteRuntime, JournaledRuntime)
    assert issubclass(PostgresRuntime, JournaledRuntime)


@pytest.mark.parametrize("submodule", sorted(PUBLISHED_SUBMODULES))
def test_published_submodule_exports_the_same_objects(submodule: str) -> None:
    module = importlib.import_module(f"jeevesagent.runtime.{submodule}")
    for name in PUBLISHED_SUBMODULES[submodule]:
        assert getattr(module, name) is getattr(rt_pkg, name), f"{submodule}.{name}"


@pytest.mark.parametrize("submodule", sorted(PUBLISHED_SUBMODULES))
def test_published_submodule_all_matches_its_public_names(submodule: str) -> None:
    module = importlib.import_module(f"jeevesagent.runtime.{submodule}")
    assert set(module.__all__) == public_names(module)
    assert set(module.__all__) >= PUBLISHED_SUBMODULES[submodule]


def test_journal_submodule_from_import_statement() -> None:
    from jeevesagent.runtime.journal import (
        InMemoryJournalStore as J_InMemory,
    )
    from jeevesagent.runtime.journal import (
        JournalEntry as J_Entry,
    )
    from jeevesagent.runtime.journal import (
        JournalStore as J_Store,
    )
    from jeevesagent.runtime.journal import (
        PostgresJournalStore as J_Postgres,
    )
    from jeevesagent.runtime.journal import (
        SqliteJournalStore as J_Sqlite,
    )

    assert (J_Entry, J_Store, J_InMemory, J_Sqlite, J_Postgres) == (
        JournalEntry,
        JournalStore,
        InMemoryJournalStore,
        SqliteJournalStore,
        PostgresJournalStore,
    )


def test_runtime_submodules_from_import_statement() -> None:
    from jeevesagent.runtime.inproc import InProcRuntime as I_Runtime
    from jeevesagent.runtime.inproc import InProcSession as I_Session
    from jeevesagent.runtime.journaled import JournaledRuntime as J_Runtime
    from jeevesagent.runtime.journaled import JournaledSession as J_Session
    from jeevesagent.runtime.postgres import PostgresJournalStore as P_Store
    from jeevesagent.runtime.postgres import PostgresRuntime as P_Runtime
    from jeevesagent.runtime.sqlite import SqliteJournalStore as S_Store
    from jeevesagent.runtime.sqlite import SqliteRuntime as S_Runtime

    assert (I_Runtime, I_Session, J_Runtime, J_Session) == (
        InProcRuntime,
        InProcSession,
        JournaledRuntime,
        JournaledSession,
    )
    assert (P_Store, P_Runtime, S_Store, S_Runtime) == (
        PostgresJournalStore,
        PostgresRuntime,
        SqliteJournalStore,
        SqliteRuntime,
    )


# -- optional dependencies ------------------------------------------------------------------------

WITHOUT_OPTIONAL_DEPS = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("asyncpg", "trio"):
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
    for blocked in ("asyncpg", "trio"):
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the import blocker did not block {blocked}")

    import os
    import tempfile

    import anyio

    import jeevesagent.runtime
    import jeevesagent.runtime.journal
    import jeevesagent.runtime.postgres
    import jeevesagent.runtime.sqlite
    from jeevesagent.runtime import JournaledRuntime, SqliteRuntime

    calls = []

    def work(x):
        calls.append(x)
        return {"doubled": 2 * x}

    async def main():
        results = []
        async with JournaledRuntime() as rt:
            async with rt.session("s"):
                results.append(await rt.step("a", work, 1))
                results.append(await rt.step("a", work, 1))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "journal.sqlite3")
            for _ in range(2):
                async with SqliteRuntime(path) as rt:
                    async with rt.session("s"):
                        results.append(await rt.step("b", work, 2))
        return results

    results = anyio.run(main, backend="asyncio")
    assert results == [{"doubled": 2}] * 2 + [{"doubled": 4}] * 2, results
    assert calls == [1, 2], calls
    assert jeevesagent.runtime.PostgresJournalStore.schema_sql()
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in ("asyncpg", "trio"))
    assert not leaked, leaked
    print("OK")
    """
)


def test_import_and_run_without_asyncpg_and_trio() -> None:
    proc = run_repo_python(WITHOUT_OPTIONAL_DEPS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


CONNECT_WITHOUT_ASYNCPG = textwrap.dedent(
    """
    import importlib.abc
    import sys
    import threading

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "asyncpg":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import anyio

    from jeevesagent.runtime import PostgresJournalStore, PostgresRuntime

    async def main():
        for cls in (PostgresJournalStore, PostgresRuntime):
            try:
                await cls.connect("postgresql://nobody@127.0.0.1:1/db")
            except ImportError as exc:
                print(f"{cls.__name__}: {exc}")
            else:
                raise SystemExit(f"{cls.__name__}.connect() did not fail")

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
    assert threading.active_count() == 1, threading.enumerate()
    """
)


def test_connect_without_asyncpg_says_what_to_install() -> None:
    proc = run_repo_python(CONNECT_WITHOUT_ASYNCPG)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout  # two classes, two event loops
    for line in lines:
        assert "No module named 'asyncpg'" in line, line
        assert 'install it with `pip install "jeevesagent[postgres]"`' in line, line


# -- small contracts ------------------------------------------------------------------------------


def test_schema_sql_is_a_list_of_str() -> None:
    statements = PostgresJournalStore.schema_sql()
    assert isinstance(statements, list)
    assert statements
    assert all(isinstance(s, str) and s.strip() for s in statements)


def test_journal_entry_is_frozen() -> None:
    entry = JournalEntry(value={"a": 1}, created_at=1700000000.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.value = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.created_at = 0.0  # type: ignore[misc]
    assert entry.value == {"a": 1}
    assert entry.created_at == 1700000000.5


def test_in_memory_store_satisfies_the_store_protocol() -> None:
    assert isinstance(InMemoryJournalStore(), JournalStore)


def test_an_object_without_the_five_methods_is_not_a_store() -> None:
    class Partial:
        async def get_step(self, session_id: str, step_name: str) -> None:
            return None

    assert not isinstance(Partial(), JournalStore)


def test_in_memory_store_key_listings_start_empty() -> None:
    store = InMemoryJournalStore()
    assert store.step_keys() == []
    assert store.stream_keys() == []


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime_cls", RUNTIME_CLASSES, ids=lambda c: c.__name__)
def test_step_signature(runtime_cls: type[Any]) -> None:
    params = inspect.signature(runtime_cls.step).parameters
    kinds = {name: p.kind for name, p in params.items()}
    assert list(params)[:3] == ["self", "name", "fn"]
    assert kinds["args"] is Parameter.VAR_POSITIONAL
    assert kinds["idempotency_key"] is Parameter.KEYWORD_ONLY
    assert params["idempotency_key"].default is None
    assert kinds["kwargs"] is Parameter.VAR_KEYWORD
    keyword_only = [n for n, k in kinds.items() if k is Parameter.KEYWORD_ONLY]
    assert keyword_only == ["idempotency_key"], "idempotency_key is the only reserved keyword"


@pytest.mark.parametrize("runtime_cls", RUNTIME_CLASSES, ids=lambda c: c.__name__)
def test_stream_step_signature(runtime_cls: type[Any]) -> None:
    params = inspect.signature(runtime_cls.stream_step).parameters
    assert list(params)[:3] == ["self", "name", "fn"]
    assert params["args"].kind is Parameter.VAR_POSITIONAL
    assert params["kwargs"].kind is Parameter.VAR_KEYWORD


@pytest.mark.parametrize("runtime_cls", RUNTIME_CLASSES, ids=lambda c: c.__name__)
def test_wait_for_signal_signature(runtime_cls: type[Any]) -> None:
    params = inspect.signature(runtime_cls.wait_for_signal).parameters
    assert list(params) == ["self", "session_id", "name", "timeout"]
    assert params["timeout"].kind is Parameter.KEYWORD_ONLY
    assert params["timeout"].default is None


@pytest.mark.parametrize("runtime_cls", RUNTIME_CLASSES, ids=lambda c: c.__name__)
def test_signal_side_methods(runtime_cls: type[Any]) -> None:
    assert list(inspect.signature(runtime_cls.signal).parameters) == [
        "self",
        "session_id",
        "name",
        "payload",
    ]
    assert list(inspect.signature(runtime_cls.poll_signal).parameters) == [
        "self",
        "session_id",
        "name",
    ]
    assert inspect.iscoroutinefunction(runtime_cls.signal)
    assert not inspect.iscoroutinefunction(runtime_cls.poll_signal)
    assert inspect.iscoroutinefunction(runtime_cls.wait_for_signal)
    assert inspect.iscoroutinefunction(runtime_cls.aclose)


@pytest.mark.parametrize("cls", [PostgresJournalStore, PostgresRuntime], ids=lambda c: c.__name__)
def test_postgres_connect_signature(cls: type[Any]) -> None:
    assert inspect.iscoroutinefunction(cls.connect)
    assert isinstance(inspect.getattr_static(cls, "connect"), classmethod)
    params = inspect.signature(cls.connect).parameters
    assert list(params)[:3] == ["dsn", "min_size", "max_size"]
    for extra in list(params)[3:]:  # later options: keyword-only with defaults, or **options
        if params[extra].kind is Parameter.VAR_KEYWORD:
            continue
        assert params[extra].kind is Parameter.KEYWORD_ONLY
        assert params[extra].default is not Parameter.empty
    assert params["min_size"].kind is Parameter.KEYWORD_ONLY
    assert params["min_size"].default == 1
    assert params["max_size"].kind is Parameter.KEYWORD_ONLY
    assert params["max_size"].default == 10


def test_schema_sql_is_a_staticmethod() -> None:
    assert isinstance(inspect.getattr_static(PostgresJournalStore, "schema_sql"), staticmethod)


@pytest.mark.parametrize("method", ["get_step", "put_step", "get_stream", "put_stream", "aclose"])
def test_store_protocol_method_signatures(method: str) -> None:
    expected = {
        "get_step": ["self", "session_id", "step_name"],
        "put_step": ["self", "session_id", "step_name", "value"],
        "get_stream": ["self", "session_id", "step_name"],
        "put_stream": ["self", "session_id", "step_name", "chunks"],
        "aclose": ["self"],
    }[method]
    for cls in (JournalStore, InMemoryJournalStore, SqliteJournalStore, PostgresJournalStore):
        fn = getattr(cls, method)
        assert inspect.iscoroutinefunction(fn), f"{cls.__name__}.{method}"
        assert list(inspect.signature(fn).parameters) == expected, f"{cls.__name__}.{method}"


# -- errors ---------------------------------------------------------------------------------------


def test_every_exported_error_is_listed_here() -> None:
    exported = {
        obj
        for name in rt_pkg.__all__
        if isinstance(obj := getattr(rt_pkg, name), type) and issubclass(obj, BaseException)
    }
    assert exported == set(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_is_a_runtime_journal_error_with_ids(cls: type[RuntimeJournalError]) -> None:
    assert issubclass(cls, RuntimeJournalError)
    err = cls("it broke; do this instead", session_id="order-42", step="charge")
    assert err.session_id == "order-42"
    assert err.step == "charge"
    assert str(err) == "it broke; do this instead"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_ids_default_to_none(cls: type[RuntimeJournalError]) -> None:
    err = cls("message only")
    assert err.session_id is None
    assert err.step is None


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_round_trips_through_pickle(cls: type[RuntimeJournalError]) -> None:
    err = cls("it broke; do this instead", session_id="order-42", step="charge")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(err, protocol=protocol))
        assert type(copy) is cls
        assert str(copy) == "it broke; do this instead"
        assert copy.args == err.args
        assert copy.session_id == "order-42"
        assert copy.step == "charge"


def test_value_encoding_error_is_also_a_type_error() -> None:
    assert issubclass(ValueEncodingError, TypeError)
    with pytest.raises(TypeError):
        raise ValueEncodingError("cannot encode", session_id="s", step="a")


def test_invalid_name_error_is_a_value_error_and_a_type_error() -> None:
    # ValueError for a str no store can hold; TypeError kept for what session() raised before
    # for a value that is not a str at all.
    assert issubclass(rt_pkg.InvalidNameError, ValueError)
    assert issubclass(rt_pkg.InvalidNameError, TypeError)


def test_store_closed_error_is_a_store_error() -> None:
    assert issubclass(StoreClosedError, StoreError)


# -- current_session() and the pydantic-ai integration (issue 15) ---------------------------------


def test_current_session_is_exported_and_refuses_outside_a_session() -> None:
    assert "current_session" in rt_pkg.__all__
    assert rt_pkg.current_session.__module__ == "jeevesagent.runtime"
    with pytest.raises(RuntimeError, match="outside a session"):
        rt_pkg.current_session()


def test_the_pydantic_ai_module_all_matches_its_public_names() -> None:
    module = importlib.import_module("jeevesagent.runtime.pydantic_ai")
    assert set(module.__all__) == public_names(module)
    assert {"Durability", "resolve_external_event", "fail_external_event"} <= set(module.__all__)

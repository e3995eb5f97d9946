"""The workflow commands of the command line (``init-schema``, ``start``, ``cancel``, ``fork``,
``result``, and what ``sessions`` and ``show`` say of workflow sessions), run as subprocesses on
real SQLite files and a real Postgres server, with a worker in another process: the CLI never
imports the workflows' code.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, SqliteRuntime, workflow
from jeevesagent.runtime._journal.backend import STEP, Record

from .test_cli import KEY, ROOT, STORES, Planted, cli, failed, ok, open_runtime

pytestmark = pytest.mark.slow

# A worker process: it imports the workflows (the CLI does not) and serves them until killed.
WORKER = """
import sys
import uuid
import anyio
from jeevesagent.runtime import PostgresRuntime, SqliteRuntime, current_runtime, workflow

@workflow(name="greet")
async def greet(name, punctuation="!"):
    rt = current_runtime()
    first, token = await rt.step("compose", lambda: (f"hello {name}", uuid.uuid4().hex))
    return {"greeting": await rt.step("finish", lambda: first + punctuation), "token": token}

@workflow(name="boom")
async def boom(message):
    await current_runtime().step("before", lambda: 1)
    raise ValueError(message)

@workflow(name="napper")
async def napper():
    await current_runtime().sleep("nap", 600)

async def main(db, key):
    options = {"signing_key": key or ""}
    if db.startswith("postgres"):
        rt = await PostgresRuntime.connect(db, min_size=1, max_size=4, **options)
    else:
        rt = SqliteRuntime(db, poll_interval=0.05, **options)
    async with rt:
        print("serving", flush=True)
        await rt.serve(greet, boom, napper)

anyio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
"""


@pytest.fixture
def journal(store_kind: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A journal target: a SQLite path (no file yet) or a DSN with a fresh, empty schema."""
    if store_kind == "sqlite":
        return str(tmp_path / "journal.sqlite3")
    return str(request.getfixturevalue("pg_schema_dsn"))


@pytest.fixture
def worker(tmp_path: pathlib.Path) -> Iterator[Any]:
    """Start a worker process on a journal (killed at the end of the test)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    started: list[subprocess.Popen[str]] = []

    def start(db: str, key: str = "") -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, str(script), db, key],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "serving", child.communicate(timeout=30)
        return child

    yield start
    for child in started:
        child.kill()
        child.communicate(timeout=30)


@STORES
def test_start_by_name_a_worker_runs_it_result_cancel_fork(journal: str, worker: Any) -> None:
    """The whole round: init-schema, start by name (no workflow code in the CLI), a worker in
    another process runs it, result prints it; a failure exits 1 with its type and message; a
    pending session cancelled never runs; a running one (asleep) is stopped; fork then result.
    (Checks of messages that do not depend on the store run on SQLite only: each CLI call costs
    a Python start-up.)"""
    db = journal
    postgres = db.startswith("postgres")
    assert "created the journal tables" in ok(cli("init-schema", "--db", db))
    again = json.loads(ok(cli("init-schema", "--json", "--db", db)))
    assert again == {"target": again["target"], "created": False, "schema_version": 5}

    greet = ("start", "greet", "g1", "--args", '["ada"]', "--kwargs", '{"punctuation": "?"}')
    out = ok(cli(*greet, "--db", db))
    assert out.strip() == "started g1: workflow 'greet', pending until a worker serving it runs it"
    boom = ("start", "boom", "b1", "--args", '["no luck"]', "--json")
    started = json.loads(ok(cli(*boom, "--db", db)))
    assert started == {"session_id": "b1", "workflow": "boom", "status": "pending"}
    ok(cli("start", "never-served", "n1", "--db", db))
    if not postgres:  # same id, other arguments: refused, as rt.start refuses it
        failed(cli("start", "greet", "g1", "--args", '["bob"]', "--db", db), 1, "other arguments")

    # Nothing runs them yet: sessions and show say whose they are and what they wait for.
    rows = [line.split() for line in ok(cli("sessions", "--db", db)).splitlines()]
    assert rows[0] == [
        *("SESSION", "STATUS", "WORKFLOW", "OWNER", "STEPS"),
        *("LAST", "ACTIVITY", "LEASE", "EXPIRES", "WAITING", "FOR"),
    ]
    assert [(r[0], r[1], r[2], r[-2:]) for r in rows[1:]] == [
        ("g1", "pending", "greet", ["a", "worker"]),
        ("b1", "pending", "boom", ["a", "worker"]),
        ("n1", "pending", "never-served", ["a", "worker"]),
    ]
    shown = ok(cli("show", "g1", "--db", db))
    assert "session 'g1': pending, workflow 'greet', no owner" in shown
    assert "waiting for: a worker" in shown
    assert '["ada"], {"punctuation": "?"}' in shown  # the arguments: a JSON row, shown as is

    # A pending session cancelled from the CLI never runs; its result exits 1.
    assert ok(cli("cancel", "n1", "--db", db)).strip() == (
        "cancelled n1 (it was pending; it will never run)"
    )
    failed(cli("result", "n1", "--db", db), 1, "'n1' was cancelled")
    if not postgres:
        failed(cli("result", "g1", "--timeout", "0.2", "--db", db), 1, "not ended within 0.2 s")

    worker(db)
    # The worker's codec is pickle: a result is a pickle, unpickled only with --trust ...
    failed(cli("result", "g1", "--timeout", "60", "--db", db), 1, "pickle", "pass --trust")
    g1 = json.loads(ok(cli("result", "g1", "--trust", "--db", db)))
    assert g1["greeting"] == "hello ada?"
    # ... a failure's type and message are read without running anything from the row.
    error = failed(cli("result", "b1", "--timeout", "60", "--db", db), 1, "'b1' failed")
    assert error.endswith("failed: ValueError: no luck")
    if not postgres:
        as_json = cli("result", "b1", "--json", "--db", db)
        assert json.loads(as_json.stdout)["error"] == {
            "type": "builtins.ValueError",
            "message": "no luck",
        }
        assert as_json.returncode == 1

    # A fork before "finish" replays "compose" and runs the rest; result reads the new session.
    out = ok(cli("fork", "g1", "g2", "--at", "finish", "--db", db))
    assert out.strip() == (
        "forked g1 into g2 (before step 'finish'): pending until a worker serving 'greet' runs it"
    )
    result = json.loads(ok(cli("result", "g2", "--trust", "--json", "--timeout", "60", "--db", db)))
    assert result == {
        "session_id": "g2",
        "workflow": "greet",
        "status": "completed",
        "value": g1,  # "compose" was replayed (the same token), "finish" ran again
    }
    if not postgres:
        failed(cli("fork", "g1", "g3", "--at", "nope", "--db", db), 1, "no step named 'nope'")
        failed(cli("fork", "g1", "g2", "--db", db), 1, "that session exists")
        failed(cli("cancel", "g1", "--db", db), 1, "already ended completed")

    # A sleeping session: sessions shows its wake-up time; cancel stops it where it runs.
    ok(cli("start", "napper", "z1", "--db", db))
    deadline = time.monotonic() + 60
    while "sleep 'nap' until" not in (listing := ok(cli("sessions", "--db", db))):
        assert time.monotonic() < deadline, listing
    if not postgres:
        [z1] = json.loads(ok(cli("sessions", "--workflow", "napper", "--json", "--db", db)))
        assert z1["waiting_for"]["kind"] == "sleep"
        assert z1["waiting_for"]["name"] == "nap"
        assert z1["waiting_for"]["until"] > time.time() + 500
        assert "waiting for: sleep 'nap' until" in ok(cli("show", "z1", "--db", db))
    out = ok(cli("cancel", "z1", "--db", db))
    # Its owner may have stopped it already (Postgres: notified at once), or not yet.
    assert out.startswith(
        ("cancel requested for z1: it is running", "cancelled z1 (it was running:")
    )
    sent = time.monotonic()
    failed(cli("result", "z1", "--timeout", "30", "--db", db), 1, "'z1' was cancelled")
    assert time.monotonic() - sent < 10  # measured: well under a second plus a CLI start-up


def test_signed_journal_start_and_result(tmp_path: pathlib.Path, worker: Any) -> None:
    """With the signing key, start writes signed arguments and result shows a verified pickle
    without --trust; without it, start refuses to write an unsigned row into a signed journal."""
    db = str(tmp_path / "signed.sqlite3")
    ok(cli("init-schema", "--db", db))
    signed = {"JEEVESAGENT_SIGNING_KEY": KEY}
    ok(cli("start", "greet", "s1", "--args", '["ada"]', "--db", db, env=signed))
    worker(db, KEY)
    out = ok(cli("result", "s1", "--timeout", "60", "--db", db, env=signed))
    assert json.loads(out)["greeting"] == "hello ada!"
    failed(cli("result", "s1", "--db", db), 1, "JEEVESAGENT_SIGNING_KEY")
    failed(cli("start", "greet", "s2", "--db", db), 1, "signed", "nothing was started")


@workflow(name="tests.cli.a_set")
async def a_set(n: int) -> set[int]:
    return set(range(1, n + 1))


class PlantedError(Exception):
    """An exception whose unpickling touches a file (see test_cli.Planted)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.args[0]),))


@workflow(name="tests.cli.planted")
async def raise_planted(marker: str) -> None:
    raise PlantedError(marker)


def test_result_never_runs_code_from_a_failure_row(tmp_path: pathlib.Path) -> None:
    """A failure's type and message are read from an unsigned pickle without --trust, and
    nothing in the row runs: not the exception pickled inside it, not a planted row."""
    db = str(tmp_path / "journal.sqlite3")
    marker = tmp_path / "unpickled"

    async def prepare() -> None:
        async with SqliteRuntime(db) as rt:
            with pytest.raises(PlantedError):
                await rt.run(raise_planted, "p1", str(marker))
        marker.unlink(missing_ok=True)  # recording checked that the exception unpickles

    async def plant() -> None:
        """A later failure row that is a planted pickle, not a JournaledFailure."""
        async with SqliteRuntime(db) as rt:
            data = pickle.dumps(Planted(marker))
            record = Record("p1", STEP, "w:failure:9", data, time.time())
            await rt.store.append([record])  # type: ignore[attr-defined]

    anyio.run(prepare)
    failed(cli("result", "p1", "--db", db), 1, f"'p1' failed: {__name__}.PlantedError: {marker}")
    assert not marker.exists()
    anyio.run(plant)
    failed(
        cli("result", "p1", "--db", db),
        1,
        "failure is not shown",
        "not unpickled (unsigned)",
        "--trust",
    )
    assert not marker.exists()


def test_result_repr_plain_and_unknown_sessions(tmp_path: pathlib.Path) -> None:
    """A value JSON cannot hold prints as its repr; a plain session (not a workflow's) has no
    result; unknown sessions and plain ones are refused by result, cancel and fork."""
    db = str(tmp_path / "journal.sqlite3")

    async def prepare() -> None:
        async with SqliteRuntime(db) as rt:
            async with rt.session("plain"):
                await rt.step("x", lambda: [1, "two"])
            await rt.run(a_set, "w-set", 2)

    anyio.run(prepare)
    assert ok(cli("result", "w-set", "--trust", "--db", db)).strip() == "{1, 2}"
    shown = json.loads(ok(cli("result", "w-set", "--trust", "--json", "--db", db)))
    assert shown["value"] == "{1, 2}"
    assert ok(cli("result", "plain", "--db", db)).strip() == "null"  # a plain session: no result
    failed(cli("result", "nope", "--db", db), 1, "unknown session 'nope'")
    failed(cli("cancel", "nope", "--db", db), 1, "unknown session 'nope'")
    failed(cli("fork", "plain", "p2", "--db", db), 1, "plain session")


def test_init_schema_errors_and_usage(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    failed(cli("init-schema", "--db", str(folder)), 1, "is a directory")
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    failed(cli("init-schema", "--db", str(text)), 1, "cannot be read as a SQLite database")

    missing = tmp_path / "nowhere" / "j.sqlite3"
    failed(cli("start", "greet", "s", "--db", str(missing)), 1, "no journal", "init-schema")
    assert not missing.parent.exists()
    # A 0.9.7-era or other SQLite file with tables of its own: the journal tables are added.
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert "created" in ok(cli("init-schema", "--db", str(other)))
    assert ok(cli("sessions", "--db", str(other))).strip() == "no sessions"

    db = str(tmp_path / "j.sqlite3")
    failed(cli("start", "greet", "s", "--args", '{"a": 1}', "--db", db), 2, "a JSON array")
    failed(cli("start", "greet", "s", "--kwargs", "[1]", "--db", db), 2, "a JSON object")
    failed(cli("start", "greet", "s", "--args", "[NaN]", "--db", db), 2, "not valid JSON")
    failed(cli("result", "s", "--timeout", "-1", "--db", db), 2, "invalid timeout")
    failed(cli("fork", "s", "--db", db), 2, "NEW_SESSION")


def test_postgres_init_schema_on_a_fresh_schema(pg_schema_dsn: str) -> None:
    failed(cli("sessions", "--db", pg_schema_dsn), 1, "jeevesagent-runtime init-schema")
    first = json.loads(ok(cli("init-schema", "--json", "--db", pg_schema_dsn)))
    assert first["created"] is True
    assert "password" not in first["target"] or "***" in first["target"]
    assert "journal tables ready" in ok(cli("init-schema", "--db", pg_schema_dsn))
    assert ok(cli("sessions", "--db", pg_schema_dsn)).strip() == "no sessions"

    async def started() -> str:
        rt: JournaledRuntime = await open_runtime(pg_schema_dsn)
        async with rt:
            return await rt.handle("p1").status()

    ok(cli("start", "greet", "p1", "--args", '["x"]', "--db", pg_schema_dsn))
    assert anyio.run(started) == "pending"

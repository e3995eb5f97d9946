"""The SQLite store's batches of writes, counted in SQLite's own statement trace: claims and
releases queued together share one transaction that does not wait for an fsync; with any other
write in it, the batch commits with ``synchronous=FULL``; a write alone is its own transaction
(no savepoint); the connection is back at ``FULL`` after every batch, even a failed one.

Batches are made deterministic by holding the store's thread on a job until the writes under
test are queued behind it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import SqliteJournalStore
from jeevesagent.runtime._backends.sqlitetx import INSERT, insert_rows
from jeevesagent.runtime._backends.thread import WorkerThread
from jeevesagent.runtime._journal.backend import STEP, Record
from jeevesagent.runtime._journal.commit import Fenced

A = "owner-a"


class Trace:
    """Statements run by the store's connection, and ``synchronous`` at each ``COMMIT``."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.full = True
        self.commits: list[bool] = []  # one per COMMIT: was synchronous FULL?

    def __call__(self, sql: str) -> None:  # runs on the store's thread
        words = sql.strip().upper().split()
        self.statements.append(" ".join(words[:2]))
        if words[:2] == ["PRAGMA", "SYNCHRONOUS"]:
            self.full = words[-1] in ("FULL", "2")
        elif words[:1] == ["COMMIT"]:
            self.commits.append(self.full)


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Trace:
    found = Trace()
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(found)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)  # the store's connection, made on its thread
    return found


async def batched(store: SqliteJournalStore, calls: list[Callable[[], Awaitable[Any]]]) -> None:
    """Run ``calls`` concurrently, all queued on the store's thread before it takes any."""
    started, gate = threading.Event(), threading.Event()
    worker = store._worker

    def holding(conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run, holding)
        with anyio.fail_after(10):
            while not started.is_set():  # noqa: ASYNC110 (set by the store's thread)
                await anyio.sleep(0.001)
        for call in calls:
            tg.start_soon(call)
        with anyio.fail_after(10):
            while worker._queue.qsize() < len(calls):  # noqa: ASYNC110 (a queue of a thread)
                await anyio.sleep(0.001)
        gate.set()


async def level(store: SqliteJournalStore) -> int:
    return int(await store._worker.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]))


def record(session_id: str, key: str) -> Record:
    return Record(session_id, STEP, key, b"value", 1.0)


async def test_claims_and_releases_queued_together_share_one_lazy_commit(
    tmp_path: Path, trace: Trace
) -> None:
    async with SqliteJournalStore(tmp_path / "j.sqlite3") as store:
        await level(store)  # opened and migrated
        opens = [partial(store.open_session, f"s{n}", A, 60.0) for n in range(10)]
        before = len(trace.commits)
        await batched(store, opens)
        assert trace.commits[before:] == [False], "ten claims: one commit, no fsync"
        for n in range(10):
            info = await store.session_info(f"s{n}")
            assert info is not None
            assert info.owner == A

        releases = [partial(store.release_lazy, f"s{n}", A, "completed", 0) for n in range(10)]
        before = len(trace.commits)
        await batched(store, releases)
        assert trace.commits[before:] == [False], "ten releases: one commit, no fsync"
        for n in range(10):
            info = await store.session_info(f"s{n}")
            assert info is not None
            assert (info.status, info.owner) == ("completed", None)
        assert await level(store) == 2, "back to FULL"


async def test_a_batch_with_records_commits_durably_claims_and_releases_included(
    tmp_path: Path, trace: Trace
) -> None:
    async with SqliteJournalStore(tmp_path / "j.sqlite3") as store:
        await store.open_session("written", A, 60.0)
        await store.open_session("done", A, 60.0)
        # (in any order: trio runs the tasks started together in an order of its own)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.open_session("new", A, 60.0),
            lambda: store.write_rows([record("written", "a")], {"written": A}),
            lambda: store.release_lazy("done", A, "completed", 1),
        ]
        before = len(trace.commits)
        await batched(store, calls)
        assert trace.commits[before:] == [True], "one commit, with an fsync"
        assert await store.load_row("written", STEP, "a") is not None
        info = await store.session_info("done")
        assert info is not None
        assert info.status == "completed"
        info = await store.session_info("new")
        assert info is not None
        assert info.owner == A
        assert await level(store) == 2


async def test_a_write_alone_is_its_own_transaction(tmp_path: Path, trace: Trace) -> None:
    async with SqliteJournalStore(tmp_path / "j.sqlite3") as store:
        await store.open_session("s", A, 60.0)
        start = len(trace.statements)
        await store.write_rows([record("s", "a")], {"s": A})
        statements = trace.statements[start:]
        assert statements[0] == "BEGIN IMMEDIATE"
        assert statements[-1] == "COMMIT"
        assert not any(s.startswith(("SAVEPOINT", "RELEASE")) for s in statements)
        assert trace.commits[-1] is True

        start = len(trace.statements)
        await store.release_lazy("s", A, "completed", 1)
        assert trace.statements[start:] == [
            "PRAGMA SYNCHRONOUS",
            "UPDATE JRT_SESSIONS",
            "PRAGMA SYNCHRONOUS",
        ], "alone, lazily, in one statement"
        assert await level(store) == 2


async def test_a_failed_job_in_a_lazy_batch_fails_alone_and_the_level_is_restored(
    tmp_path: Path, trace: Trace
) -> None:
    async with SqliteJournalStore(tmp_path / "j.sqlite3") as store:
        worker = store._worker
        await level(store)  # opened and migrated

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        failed: list[BaseException] = []

        async def fails() -> None:
            try:
                await worker.run(broken, batched=True, lazy=True)
            except sqlite3.OperationalError as exc:
                failed.append(exc)

        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.open_session("a", A, 60.0),
            fails,
            lambda: store.open_session("b", A, 60.0),
        ]
        before = len(trace.commits)
        await batched(store, calls)
        assert len(failed) == 1
        assert "no_such_table" in str(failed[0])
        assert trace.commits[before:] == [False]
        for sid in ("a", "b"):
            info = await store.session_info(sid)
            assert info is not None
            assert info.owner == A
        assert await level(store) == 2


async def test_a_cancelled_caller_waits_for_its_job_and_is_cancelled_after() -> None:
    """The wait for a job is not cancellable: the caller learns the outcome of the job, and its
    cancellation comes at its next checkpoint."""
    worker: WorkerThread[None] = WorkerThread("test", lambda: None, lambda _: None)
    started, gate = threading.Event(), threading.Event()
    seen: list[str] = []

    def job(_: None) -> str:
        started.set()
        gate.wait(10)
        return "done"

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            seen.append(await worker.run(job))
            await anyio.lowlevel.checkpoint()
            seen.append("not cancelled")

    try:
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, scope)
            with anyio.fail_after(10):
                while not started.is_set():  # noqa: ASYNC110 (set by the worker's thread)
                    await anyio.sleep(0.001)
            scope.cancel()
            await anyio.sleep(0.01)  # the cancellation reaches the caller, who waits on
            assert seen == []
            gate.set()
        assert seen == ["done"]
        assert scope.cancelled_caught
    finally:
        gate.set()
        await worker.aclose()


async def test_the_fence_of_a_batch_names_every_session_not_held_by_its_owner(
    tmp_path: Path,
) -> None:
    """Many sessions and two owners in one write: checked together, the refused ones named."""
    async with SqliteJournalStore(tmp_path / "j.sqlite3") as store:
        for n in range(30):
            await store.open_session(f"a{n}", A, 60.0)
        await store.open_session("b0", "owner-b", 60.0)
        held = {f"a{n}": A for n in range(30)} | {"b0": "owner-b"}
        records = [record(sid, "k") for sid in held]
        assert await store.write_rows(records, held) == {}
        for sid in held:
            assert await store.load_row(sid, STEP, "k") is not None

        wrong = held | {"a3": "owner-b", "b0": A, "nobody": A}
        with pytest.raises(Fenced) as caught:
            await store.write_rows([record(sid, "k2") for sid in wrong], wrong)
        assert caught.value.session_ids == {"a3", "b0", "nobody"}
        for sid in wrong:
            assert await store.load_row(sid, STEP, "k2") is None, "nothing written"


@pytest.mark.parametrize("count", [1, 2, 3, 127, 128, 300])
def test_insert_rows_keeps_the_first_of_each_key_as_one_row_at_a_time_would(count: int) -> None:
    rows = [("s", STEP, f"k{n % 97}", f"v{n}".encode(), float(n)) for n in range(count)]
    tables = []
    for insert in (lambda c: c.executemany(INSERT, rows), lambda c: insert_rows(c, rows)):
        conn = sqlite3.connect(":memory:")
        conn.execute(
            "CREATE TABLE jrt_journal (session_id, kind, key, value, created_at,"
            " PRIMARY KEY (session_id, kind, key))"
        )
        insert(conn)
        tables.append(conn.execute("SELECT * FROM jrt_journal ORDER BY key").fetchall())
        conn.close()
    assert tables[0] == tables[1]
    assert len(tables[1]) == min(count, 97)

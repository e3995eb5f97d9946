"""Defects found by adversarial testing (issue 10), each pinned by a test that failed before its
fix: a session's background work outliving its first context, lost buffered commits, values seen
before they were committed, claims kept by a closed runtime, transient renewal failures, and how
a session stopped by its own application is recorded.

Failures are real: a SQLite file whose write lock another connection holds (the store's busy
timeout then runs out), and Postgres connections terminated with ``pg_terminate_backend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SessionBusyError,
    SqliteJournalStore,
    StoreClosedError,
    StoreError,
)

from .conftest import StoreFactory

POLL = 0.02


def runtime(store: Any, **options: Any) -> JournaledRuntime:
    options.setdefault("poll_interval", POLL)
    return JournaledRuntime(store, **options)


# -- real failures -----------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_write_lock(path: str) -> Iterator[sqlite3.Connection]:
    """Hold the SQLite file's write lock from another connection until the block ends."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


class LogEvent(logging.Handler):
    """Sets an anyio Event when the runtime logs a record containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = anyio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.text in message:
            self.event.set()


@contextlib.contextmanager
def watch_log(text: str) -> Iterator[LogEvent]:
    logger = logging.getLogger("jeevesagent.runtime")
    handler = LogEvent(text)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def durable_store(kind: str, target: str, **options: Any) -> Any:
    if kind == "sqlite":
        return SqliteJournalStore(target, **options)
    store = await PostgresJournalStore.connect(target, min_size=1, max_size=4)
    await store.init_schema()
    return store


# The in-memory store cannot fail a commit or a renewal: these defects need a durable store.
durable_stores = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


# -- 1. background work of a shared session state -----------------------------------------------


async def test_lease_is_renewed_while_a_later_context_is_still_open(
    store_factory: StoreFactory,
) -> None:
    """Two concurrent contexts of one session: the first exits, the second stays open for
    longer than the lease. The claim must still be renewed (another runtime cannot take the
    session over) and the second context's writes must still land."""
    lease = 0.6
    async with (
        runtime(await store_factory.new(), lease=lease) as a,
        runtime(await store_factory.new()) as b,
    ):
        first_in, second_in, first_done = anyio.Event(), anyio.Event(), anyio.Event()

        async def first() -> None:  # the first context: it starts the background work
            async with a.session("shared"):
                await a.step("one", lambda: 1)
                first_in.set()
                await second_in.wait()
            first_done.set()

        async def second() -> None:
            await first_in.wait()
            async with a.session("shared"):
                second_in.set()
                await first_done.wait()
                await anyio.sleep(lease * 2.5)  # several leases after the first context left
                with pytest.raises(SessionBusyError):
                    async with b.session("shared"):
                        pytest.fail("another runtime took over a session that is still open")
                assert await a.step("two", lambda: 2) == 2

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
        async with b.session("shared"):  # released when the last context exited
            assert await b.step("two", lambda: 0) == 2


async def test_buffered_flusher_keeps_running_after_the_first_context_exits(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with runtime(store, durability="buffered", flush_interval=0.01) as rt:
        first_in, second_in, first_done = anyio.Event(), anyio.Event(), anyio.Event()
        committed = anyio.Event()

        async def first() -> None:  # the first context: it starts the flusher
            async with rt.session("shared"):
                first_in.set()
                await second_in.wait()
            first_done.set()

        async def second() -> None:
            await first_in.wait()
            async with rt.session("shared"):
                second_in.set()
                await first_done.wait()
                await rt.step("late", lambda: "v")
                with anyio.fail_after(5):  # committed by the flusher, not by the exit
                    while not (await store.load_session("shared")).steps:  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # (the store has no change notification)
                committed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
        assert committed.is_set()


# -- 3. a failed buffered flush -------------------------------------------------------------------


@durable_stores
async def test_a_failed_buffered_flush_fails_the_session_and_leaves_no_gap(
    store_kind: str, store_target: str
) -> None:
    store = await durable_store(store_kind, store_target, busy_timeout=0.05)
    later_fn_running = anyio.Event()
    may_return = anyio.Event()
    ran_to_end = False
    try:
        rt = runtime(store, durability="buffered", flush_interval=0.3)

        async def later() -> str:
            later_fn_running.set()
            await may_return.wait()
            return "second"

        async def body() -> None:
            nonlocal ran_to_end
            async with rt.session("s"):
                await rt.step("first", lambda: "first")  # buffered, not committed yet

                async def step_two() -> None:
                    await rt.step("second", later)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(step_two)
                    await later_fn_running.wait()
                    with watch_log("could not be committed") as failed:
                        if store_kind == "sqlite":
                            with sqlite_write_lock(store_target):
                                with anyio.fail_after(10):
                                    await failed.event.wait()
                        else:
                            async with PgTableLock(store_target) as lock:
                                await anyio.sleep(0.6)  # a periodic flush waits on the lock
                                await lock.release(kill=True)  # ... and its connection dies
                            with anyio.fail_after(10):
                                await failed.event.wait()
                    may_return.set()
                ran_to_end = True

        with pytest.raises(StoreError) as caught:
            await body()
        assert caught.value.session_id == "s"
        assert caught.value.step == "first"  # by its name, not its journal key
        assert not ran_to_end
        await rt.aclose()
        journal = await store.load_session("s")
        names = sorted(key.split(":")[1] for key in journal.steps)
        assert "second" not in names or "first" in names, f"a gap in the journal: {names}"
        [info] = [i for i in await store.list_sessions(None) if i.session_id == "s"]
        assert info.status == "failed"
    finally:
        await store.aclose()


# -- 4. a concurrent caller of the same key --------------------------------------------------------


class PgTableLock:
    """Hold ``LOCK TABLE`` on a journal table from another connection (in a thread of its own) until
    ``release()``; with ``kill=True`` the release first terminates every other connection, so
    the inserts waiting on the lock fail."""

    def __init__(self, dsn: str, table: str = "jrt_journal") -> None:
        self.dsn = dsn
        self.table = table
        self.locked = threading.Event()
        self.release_now = threading.Event()
        self.kill = False
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._main)

    def _main(self) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                tx = conn.transaction()
                await tx.start()
                await conn.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
                self.locked.set()
                await asyncio.get_running_loop().run_in_executor(None, self.release_now.wait)
                if self.kill:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    )
                await tx.rollback()
            finally:
                await conn.close()

        try:
            asyncio.run(go())
        except BaseException as exc:
            self.error.append(exc)
            self.locked.set()

    async def __aenter__(self) -> PgTableLock:
        self.thread.start()
        await anyio.to_thread.run_sync(self.locked.wait)
        if self.error:
            raise self.error[0]
        return self

    async def release(self, kill: bool = False) -> None:
        self.kill = kill
        self.release_now.set()
        await anyio.to_thread.run_sync(self.thread.join)

    async def __aexit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            await self.release()


@durable_stores
async def test_a_concurrent_same_key_caller_never_sees_an_uncommitted_value(
    store_kind: str, store_target: str
) -> None:
    """The first caller's result is not committed yet (its commit waits on a lock, then fails):
    a second caller of the same key must wait, then run the step itself -- never return the
    first caller's value."""
    store = await durable_store(store_kind, store_target, busy_timeout=0.3)
    calls: list[str] = []
    first_returning = anyio.Event()
    try:
        rt = runtime(store)

        lock_released = anyio.Event()

        async def work(who: str) -> str:
            calls.append(who)
            if who == "first":
                first_returning.set()
            elif who == "second":
                await lock_released.wait()
            return f"value of {who}"

        seen: dict[str, Any] = {}

        async def caller(who: str) -> None:
            try:
                seen[who] = await rt.step("pay", work, who, idempotency_key="pay-1")
            except StoreError as exc:
                seen[who] = exc
            if who == "first":
                first_ended.set()

        first_ended = anyio.Event()

        async def until_first_failed() -> None:
            with anyio.fail_after(10):
                await first_ended.wait()

        async with rt.session("s"):
            await rt.step("warm", lambda: None)  # the writer connection exists already
            if store_kind == "sqlite":
                async with anyio.create_task_group() as tg:
                    with sqlite_write_lock(store_target):
                        tg.start_soon(caller, "first")
                        await first_returning.wait()  # its commit now waits on the lock
                        tg.start_soon(caller, "second")
                        await until_first_failed()  # the busy timeout ran out
                    lock_released.set()
            else:
                async with PgTableLock(store_target) as lock, anyio.create_task_group() as tg:
                    tg.start_soon(caller, "first")
                    await first_returning.wait()
                    tg.start_soon(caller, "second")
                    await anyio.sleep(0.2)  # both callers are inside step() by now
                    assert "second" not in seen, "returned a value before its commit"
                    await lock.release(kill=True)  # the first commit fails
                    lock_released.set()
        assert isinstance(seen["first"], StoreError), seen
        assert seen["first"].step == "idempotency_key='pay-1'"  # not the key "k:pay-1"
        # The second caller must not have returned the first caller's value, which was never
        # committed: it ran the step itself, and its value is the one recorded.
        assert seen["second"] == "value of second", seen
        assert calls == ["first", "second"]
        async with rt.session("s"):
            assert await rt.step("pay", work, "x", idempotency_key="pay-1") == "value of second"
        await rt.aclose()
    finally:
        await store.aclose()


# -- 10. closing a runtime with a session open -----------------------------------------------------


async def test_aclose_with_a_session_open_releases_its_claim(store_factory: StoreFactory) -> None:
    a = runtime(await store_factory.new())
    opened = anyio.Event()
    closed = anyio.Event()
    outcome: list[BaseException] = []

    async def hold() -> None:
        try:
            async with a.session("held"):
                await a.step("one", lambda: 1)
                opened.set()
                await closed.wait()
                await a.step("two", lambda: 2)
        except BaseException as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await opened.wait()
        await a.aclose()
        # A new runtime in this same live process gets the session at once.
        async with runtime(await store_factory.new()) as b:
            with anyio.fail_after(5):
                async with b.session("held"):
                    assert await b.step("one", lambda: 0) == 1
        closed.set()
    [error] = outcome
    assert type(error) is StoreClosedError, repr(error)
    assert error.session_id == "held"


# -- a transient failure of one lease renewal ----------------------------------------------------


@durable_stores
async def test_a_transient_renewal_failure_does_not_stop_the_session(
    store_kind: str, store_target: str
) -> None:
    lease = 1.5
    store = await durable_store(store_kind, store_target, busy_timeout=0.05)
    try:
        rt = runtime(store, lease=lease)
        with watch_log("renewing the claim failed") as failed:
            async with rt.session("s"):
                await rt.step("one", lambda: 1)
                if store_kind == "sqlite":
                    with sqlite_write_lock(store_target), anyio.fail_after(10):
                        await failed.event.wait()
                else:
                    async with PgTableLock(store_target, "jrt_sessions") as lock:
                        await anyio.sleep(lease / 2)  # a renewal now waits on the lock
                        await lock.release(kill=True)  # ... and its connection dies
                    with anyio.fail_after(10):
                        await failed.event.wait()
                # The lease still holds: the session goes on, and renews again.
                await anyio.sleep(lease / 2)
                assert await rt.step("two", lambda: 2) == 2
        await rt.aclose()
    finally:
        await store.aclose()


# -- how a session that its own application stopped is recorded ---------------------------------


async def test_a_session_cancelled_by_its_application_is_interrupted_and_resumable(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        with anyio.move_on_after(0.05):
            async with rt.session("deploy"):
                await rt.step("one", lambda: 1)
                await anyio.sleep(10)

        async def ctrl_c() -> None:
            async with rt.session("ctrl-c"):
                await rt.step("one", lambda: 1)
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await ctrl_c()
        statuses = {i.session_id: i.status for i in await rt.list_sessions()}
        assert statuses == {"deploy": "interrupted", "ctrl-c": "interrupted"}
        assert [i.session_id for i in await rt.list_sessions("interrupted")] == [
            "deploy",
            "ctrl-c",
        ]
        found = sorted(i.session_id for i in await rt.orphaned_sessions())
        assert found == ["ctrl-c", "deploy"]
        async with rt.session("deploy"):
            assert await rt.step("one", lambda: 0) == 1
        assert [i.session_id for i in await rt.orphaned_sessions()] == ["ctrl-c"]


# -- closing a SQLite store leaves no thread behind ------------------------------------------------

IDLE_THREAD_SCRIPT = """
import os, sys, tempfile, threading
import anyio
from jeevesagent.runtime import JournaledRuntime, SqliteJournalStore

async def main():
    before = set(threading.enumerate())
    store = SqliteJournalStore(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
    async with JournaledRuntime(store) as rt, rt.session("s"):
        await rt.step("one", lambda: 1)
    await store.aclose()
    print(sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive()))

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.slow
def test_closing_a_sqlite_store_leaves_no_idle_thread() -> None:
    """The store's worker thread is joined without borrowing a thread of the event loop's pool
    (trio's thread cache and anyio's workers keep such a thread idle after the call). In a
    process of its own: the test runner itself runs trio with helper threads."""
    import subprocess
    import sys

    for backend in ("asyncio", "trio"):
        out = subprocess.run(
            [sys.executable, "-c", IDLE_THREAD_SCRIPT, backend],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "[]", (backend, out.stdout, out.stderr)

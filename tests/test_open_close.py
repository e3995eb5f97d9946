"""Opening and closing a session: one round trip to open (the store's ``open_session``), a lazy
release to close, and what a crash of the closing process leaves behind.

The crash test runs a child process on the same store that closes a plain session (released
lazily), runs a workflow to its end (released durably), and holds a third session open, then
kills it with SIGKILL. Another process -- this one -- must see the first two ended at once and
take the third over at once, although its lease (600 s) is far from expiring: the release was
handed to the store before the session's context returned, and a claim of a dead process on
this host is taken over without waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from jeevesagent.runtime import JournaledRuntime
from jeevesagent.runtime._journal.backend import JournalBackend, OpenedSession

from .conftest import StoreFactory, pg
from .test_crash import open_store

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import sys
    import anyio
    from jeevesagent.runtime import (
        JournaledRuntime, PostgresJournalStore, SqliteJournalStore, current_runtime, workflow,
    )

    kind, target, backend = sys.argv[1:4]

    @workflow(name="test.open_close.double")
    async def double(n):
        return await current_runtime().step("double", lambda: n * 2)

    def say(line):
        print(line, flush=True)

    async def main():
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target, min_size=1, max_size=2)
            await store.init_schema()
        rt = JournaledRuntime(store, lease=600)
        async with rt.session("closed"):
            await rt.step("a", lambda: 1)
            await rt.step("b", lambda: 2)
        say("closed")
        say(f"ran {await rt.run(double, 'wf', 21)}")
        async with rt.session("held"):
            await rt.step("x", lambda: "x")
            say("held")
            sys.stdin.readline()  # never answered: killed here

    anyio.run(main, backend=backend)
    """
)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_sigkilled_owner_leaves_its_sessions_ended_or_recoverable_at_once(
    store_kind: str, anyio_backend: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = (
        str(tmp_path / "journal.sqlite3")
        if store_kind == "sqlite"
        else str(request.getfixturevalue("pg_schema_dsn"))
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", CHILD, store_kind, target, anyio_backend[0]]
    with (tmp_path / "child.err").open("wb") as stderr:
        process = await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    lines: list[str] = []
    async with process:
        assert process.stdout is not None
        out = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(60):
            while not lines or lines[-1] != "held":
                try:
                    lines.append((await out.receive_until(b"\n", 1 << 16)).decode())
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    err = (tmp_path / "child.err").read_text()
                    raise AssertionError(f"child ended early: {lines}\n{err}") from None
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL  # reaped: no zombie owner
    assert lines == ["closed", "ran 42", "held"]

    store = await open_store(store_kind, target)
    try:
        closed = await store.session_info("closed")
        assert closed is not None
        assert (closed.status, closed.owner, closed.steps) == ("completed", None, 2)
        rt = JournaledRuntime(store, lease=600)
        with anyio.fail_after(10):
            assert await rt.result("wf") == 42, "the workflow's outcome is visible at once"
        calls: list[str] = []
        # wait=0: SessionBusyError unless the dead owner's claim is taken over at once. The
        # steps are called as the child called them (no arguments): they replay.
        async with rt.session("held", wait=0):
            assert await rt.step("x", lambda: calls.append("x") or "new") == "x"
        async with rt.session("closed", wait=0):
            assert await rt.step("a", lambda: calls.append("a") or 0) == 1
        assert calls == [], "nothing ran again"
        held = await store.session_info("held")
        assert held is not None
        assert (held.status, held.owner) == ("completed", None)
    finally:
        await store.aclose()


async def test_open_session_of_the_runtime_is_one_call(store_factory: StoreFactory) -> None:
    """The runtime opens a session with the store's ``open_session`` alone (claim, journal and
    mailbox names), and moves the signals it names into the journal."""
    store = await store_factory.new()
    calls: list[str] = []
    real = store.open_session

    async def counted(session_id: str, owner: str, lease: float) -> OpenedSession:
        calls.append(session_id)
        return await real(session_id, owner, lease)

    for name in ("claim", "load_session", "pending_names"):
        original = getattr(store, name)

        def refuse(*args: Any, _name: str = name, _original: Any = original) -> Any:
            if calls and not _refusals_allowed(store):
                raise AssertionError(f"the runtime called {_name} besides open_session")
            return _original(*args)

        setattr(store, name, refuse)
    store.open_session = counted  # type: ignore[method-assign]
    async with JournaledRuntime(store) as rt:
        async with rt.session("s"):
            await rt.step("a", lambda: 1)
        await rt.signal("s", "go", {"n": 1})
        async with rt.session("s"):
            assert await rt.step("a", lambda: 2) == 1
            assert rt.poll_signal("s", "go") == {"n": 1}, "fetched into the journal on open"
    assert calls == ["s", "s"]


def _refusals_allowed(store: JournalBackend) -> bool:
    """The composed default (memory store, adapter) calls the three itself."""
    return type(store).open_session is JournalBackend.open_session


# Owner A of the test below, in a process of its own: finishes session "s" (a step row and the
# release in one transaction), holds that transaction open until told, then commits.
def _held_transaction(body: str) -> str:
    """A child script: in one transaction on the database of argv[1], run ``body`` (statements
    on ``conn``), print "held", wait for a line on stdin, commit, print "committed"."""
    return textwrap.dedent(
        """
        import asyncio, sys
        import asyncpg

        async def main():
            conn = await asyncpg.connect(sys.argv[1])
            async with conn.transaction():
        {body}
                print("held", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            print("committed", flush=True)
            await conn.close()

        asyncio.run(main())
        """
    ).replace("{body}", textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8))


FINISHER = _held_transaction(
    """
    await conn.execute(
        "INSERT INTO jrt_journal (session_id, kind, key, value, created_at) "
        "VALUES ('s', 0, 's:last', '\\\\x00'::bytea, 0)"
    )
    await conn.execute(
        "UPDATE jrt_sessions SET status = 'completed', owner = NULL, "
        "lease_expires = NULL WHERE session_id = 's'"
    )
    """
)


async def test_a_claim_granted_after_waiting_for_a_finishing_owner_reads_the_whole_journal(
    pg_schema_dsn: str,
) -> None:
    """Postgres: a claim that waits for the row lock of an owner that is finishing its session
    (its last steps and its release in one transaction) is granted when that transaction
    commits -- and then the journal it returns must include that transaction's steps. Found by
    three workers sharing 100 sessions on a loaded machine: a worker that had listed a session
    as pending claimed it just as another finished it, read the journal as it was before, and
    ran the finished steps again. (In READ COMMITTED, the claim's INSERT ... ON CONFLICT DO
    UPDATE sees the newest row, while the statement's journal read keeps its older snapshot.)"""
    from jeevesagent.runtime import PostgresJournalStore

    store = await PostgresJournalStore.connect(pg_schema_dsn, min_size=1, max_size=2)
    try:
        await store.init_schema()
        first = await store.open_session("s", "owner-a", 60.0)
        assert first.info.owner == "owner-a"
        b = await open_while_a_commits(
            pg_schema_dsn, FINISHER, lambda: store.open_session("s", "owner-b", 60.0)
        )
        # A released it: B's claim is granted, and B must see what A committed with the release.
        assert b.info.owner == "owner-b", b.info
        assert b.journal is not None
        assert "s:last" in b.journal.steps, sorted(b.journal.steps)
    finally:
        await store.aclose()


# Owner A of the test below, in a process of its own, whose lease has run out: records a step as
# the store's fenced insert does (the sessions row locked FOR SHARE, then the row inserted), holds
# that transaction open until told, then commits.
LATE_WRITER = _held_transaction(
    """
    owner = await conn.fetchval(
        "SELECT owner FROM jrt_sessions WHERE session_id = 's' FOR SHARE"
    )
    assert owner == "owner-a", owner
    await conn.execute(
        "INSERT INTO jrt_journal (session_id, kind, key, value, created_at) "
        "VALUES ('s', 0, 's:late', '\\\\x00'::bytea, 0)"
    )
    """
)


async def test_a_claim_taken_over_while_the_old_owner_writes_reads_the_old_owners_last_row(
    pg_schema_dsn: str,
) -> None:
    """Postgres: owner A's lease ran out while A was recording a step (its fenced insert holds
    the sessions row FOR SHARE). B's claim waits for that lock and is granted once A commits --
    a lock leaves the row's xmin as it was, so the snapshot check of the claim passes -- and
    the journal B gets must include A's row: otherwise B runs a step that A completed again."""
    from jeevesagent.runtime import PostgresJournalStore

    store = await PostgresJournalStore.connect(pg_schema_dsn, min_size=1, max_size=2)
    try:
        await store.init_schema()
        first = await store.open_session("s", "owner-a", 60.0)
        assert first.info.owner == "owner-a"
        # A's lease runs out (as if A stalled past it); A does not know yet.
        await anyio.to_thread.run_sync(
            pg,
            pg_schema_dsn,
            lambda conn: conn.execute(
                "UPDATE jrt_sessions SET lease_expires = 0 WHERE session_id = 's'"
            ),
        )
        b = await open_while_a_commits(
            pg_schema_dsn, LATE_WRITER, lambda: store.open_session("s", "owner-b", 60.0)
        )
        assert b.info.owner == "owner-b", b.info
        assert b.journal is not None
        assert "s:late" in b.journal.steps, sorted(b.journal.steps)
    finally:
        await store.aclose()


async def open_while_a_commits(dsn: str, owner_a: str, open_b: Callable[[], Awaitable[T]]) -> T:
    """Run ``owner_a`` (a script) in a child process until it holds its transaction open, start
    ``open_b()`` (owner B's open of session "s"), wait until B's claim statement waits for A's
    row lock (it has taken its snapshot), then let A commit; returns what ``open_b`` returned."""
    async with await anyio.open_process(
        [sys.executable, "-c", owner_a, dsn], stdin=subprocess.PIPE
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        out = BufferedByteReceiveStream(child.stdout)
        with anyio.fail_after(30):
            assert await out.receive_until(b"\n", 100) == b"held"
        opened: list[T] = []
        async with anyio.create_task_group() as tg:

            async def run_b() -> None:
                opened.append(await open_b())

            tg.start_soon(run_b)
            with anyio.fail_after(30):
                while not await anyio.to_thread.run_sync(  # noqa: ASYNC110 -- the server's
                    _waiting_for_a_lock, dsn
                ):
                    await anyio.sleep(0.01)
            await child.stdin.send(b"go\n")
        with anyio.fail_after(30):
            assert await out.receive_until(b"\n", 100) == b"committed"
    (b,) = opened
    return b


def _waiting_for_a_lock(dsn: str) -> bool:
    """Whether some statement of the server waits for a lock."""
    return bool(
        pg(dsn, lambda conn: conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))
    )

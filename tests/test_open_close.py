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
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from jeevesagent.runtime import JournaledRuntime
from jeevesagent.runtime._journal.backend import JournalBackend, OpenedSession

from .conftest import StoreFactory
from .test_crash import open_store

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

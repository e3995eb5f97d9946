"""Durable coordination through the runtime, on every store: ownership of a session (busy, wait,
expiry takeover, dead owner on this host), a runtime that lost its claim (fenced steps and
receipts, a session stopped by its heartbeat), the sessions table as the runtime reports it, and
signals between runtimes on one journal (woken by LISTEN/NOTIFY on Postgres, by polling on SQLite
and memory). The store primitives themselves are tested in test_coordination_store.py.

Two runtimes on one journal model two processes or hosts: each gets its own store object from
``await store_factory.new()``. The store primitives (``_claim``, ``_release``) stand in for a
runtime elsewhere that hangs, dies or takes a session over.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, SessionBusyError, StoreError
from jeevesagent.runtime.journal import OpenedSession

from .conftest import StoreFactory

POLL = 0.02  # poll_interval of the runtimes here: waits notice a change within tens of ms


def runtime(store: Any, **options: Any) -> JournaledRuntime:
    options.setdefault("poll_interval", POLL)
    return JournaledRuntime(store, **options)


class Calls:
    """A step function that records its calls."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    async def __call__(self, x: int) -> int:
        self.args.append(x)
        return x * 10


async def open_session(rt: JournaledRuntime, session_id: str, wait: float | None = None) -> None:
    """Open a session that is expected to be refused."""
    async with rt.session(session_id, wait=wait):
        pytest.fail(f"opened session {session_id!r}, which another runtime holds")


async def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    process = await anyio.open_process([sys.executable, "-c", "pass"])
    await process.wait()
    await process.aclose()
    return process.pid


async def dead_owner() -> str:
    """The owner token of a runtime whose process (on this host, in this pid namespace) ended."""
    code = "from jeevesagent.runtime._journal.owner import new_owner_id; print(new_owner_id())"
    result = await anyio.run_process([sys.executable, "-c", code])
    return result.stdout.decode().strip()


async def take_over(store: Any, rt: JournaledRuntime, session_id: str) -> None:
    """Another runtime takes ``session_id`` from ``rt`` (as after ``rt``'s lease expired)."""
    await store.release(session_id, rt.owner_id, "failed", 0)
    assert (await store.claim(session_id, "otherhost:2:y", 30)).owner == "otherhost:2:y"


# -- ownership ------------------------------------------------------------------------------------


async def test_a_session_held_by_another_runtime_is_busy(store_factory: StoreFactory) -> None:
    async with (
        runtime(await store_factory.new()) as a,
        runtime(await store_factory.new()) as b,
    ):
        async with a.session("order-42"):
            with pytest.raises(SessionBusyError) as caught:
                await open_session(b, "order-42")
            assert caught.value.session_id == "order-42"
            assert "'order-42'" in str(caught.value)
            assert a.owner_id in str(caught.value)
            # The refused open changed nothing: the first runtime still holds the session.
            [info] = await b.list_sessions("running")
            assert info.owner == a.owner_id
        # Once the first runtime is done, the second opens the session without waiting.
        async with b.session("order-42"):
            pass


async def test_waiting_opens_as_soon_as_the_owner_exits_and_replays_its_steps(
    store_factory: StoreFactory,
) -> None:
    work = Calls()
    opened_at: list[float] = []
    seen: list[int] = []
    async with (
        runtime(await store_factory.new()) as a,
        runtime(await store_factory.new()) as b,
    ):

        async def second() -> None:
            async with b.session("s", wait=2):
                opened_at.append(anyio.current_time())
                seen.append(await b.step("first", work, 1))  # replayed: recorded by a
                seen.append(await b.step("second", work, 2))  # new: runs here

        async with anyio.create_task_group() as tg:
            async with a.session("s"):
                assert await a.step("first", work, 1) == 10
                tg.start_soon(second)
                await anyio.sleep(0.1)
                assert not opened_at, "the waiting runtime opened a session that was held"
            released_at = anyio.current_time()
    assert len(opened_at) == 1
    assert opened_at[0] - released_at < 0.5
    assert seen == [10, 20]
    assert work.args == [1, 2]  # step "first" ran once, in a


async def test_a_cancelled_wait_for_a_held_session_leaves_no_claim(
    store_factory: StoreFactory,
) -> None:
    async with (
        runtime(await store_factory.new()) as a,
        runtime(await store_factory.new()) as b,
    ):
        async with a.session("s"):
            with anyio.move_on_after(0.05) as scope:
                await open_session(b, "s", wait=5)
            assert scope.cancelled_caught
        [info] = await b.list_sessions("completed")
        assert info.owner is None
        async with a.session("s"):  # at once, no wait
            pass


async def test_an_open_that_fails_after_claiming_leaves_no_claim(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await store_factory.new()
    # The store grants the claim (committed), then the open fails: slow and cancelled, or an
    # error (the connection lost after the commit, say).
    open_session_of_store = store.open_session

    async def slow_open(session_id: str, owner: str, lease: float) -> OpenedSession:
        opened = await open_session_of_store(session_id, owner, lease)
        await anyio.sleep(1)  # a slow database
        return opened

    async def failing_open(session_id: str, owner: str, lease: float) -> OpenedSession:
        await open_session_of_store(session_id, owner, lease)
        raise StoreError("the database went away", session_id=session_id)

    async with runtime(store) as b, runtime(await store_factory.new()) as a:
        monkeypatch.setattr(store, "open_session", slow_open)
        with anyio.move_on_after(0.05):
            await open_session(b, "cancelled")
        monkeypatch.setattr(store, "open_session", failing_open)
        with pytest.raises(StoreError):
            await open_session(b, "failed")
        monkeypatch.undo()

        async def failing_take(*args: object) -> None:
            raise StoreError("the database went away", session_id="drained")

        # Opened, then moving a waiting signal into the journal fails.
        await a.signal("drained", "go", 1)
        monkeypatch.setattr(store, "take_signal", failing_take)
        with pytest.raises(StoreError):
            await open_session(b, "drained")
        monkeypatch.undo()
        assert await a.list_sessions("running") == []
        for sid in ("cancelled", "failed", "drained"):
            async with a.session(sid):
                pass


async def test_a_hung_owner_elsewhere_is_taken_over_when_its_lease_expires(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    started = time.monotonic()
    await store.claim("s", "otherhost:1:x", 0.3)
    async with runtime(await store_factory.new()) as rt:
        with pytest.raises(SessionBusyError) as caught:
            await open_session(rt, "s")
        assert caught.value.session_id == "s"
        assert "otherhost:1:x" in str(caught.value)
        waited = time.monotonic()
        with pytest.raises(SessionBusyError):  # a wait shorter than the lease ends busy
            await open_session(rt, "s", wait=0.1)
        assert time.monotonic() - waited >= 0.09
        async with rt.session("s", wait=3):
            elapsed = time.monotonic() - started
            [info] = await rt.list_sessions("running")
            assert info.owner == rt.owner_id
    assert 0.28 <= elapsed < 2.0


async def test_a_dead_owner_on_this_host_is_taken_over_at_once(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    await store.claim("s", await dead_owner(), 30)
    async with runtime(await store_factory.new()) as rt:
        started = time.monotonic()
        async with rt.session("s"):  # no wait: the claim of a dead process counts for nothing
            [info] = await rt.list_sessions("running")
            assert info.owner == rt.owner_id
        assert time.monotonic() - started < 2.0
        # The claim of another live runtime of this very process (same host and pid) stands.
        async with runtime(await store_factory.new()) as holder, holder.session("t"):
            with pytest.raises(SessionBusyError):
                await open_session(rt, "t")


# -- a runtime that lost its claim ----------------------------------------------------------------


async def test_a_step_after_losing_the_claim_is_refused_and_records_nothing(
    store_factory: StoreFactory,
) -> None:
    work = Calls()
    other = await store_factory.new()
    async with runtime(await store_factory.new(), lease=30) as a:

        async def run() -> None:
            async with a.session("s"):
                assert await a.step("before", work, 1) == 10
                await take_over(other, a, "s")
                await a.step("after", work, 2)
                pytest.fail("a step of a fenced runtime returned")

        with pytest.raises(SessionBusyError) as caught:
            await run()
        assert caught.value.session_id == "s"
    assert len((await other.load_session("s")).steps) == 1  # "before" only
    # The new owner keeps its claim: the fenced runtime's exit released nothing.
    [info] = await other.list_sessions("running")
    assert info.owner == "otherhost:2:y"


async def test_a_fenced_runtime_leaves_a_signal_in_the_mailbox_for_the_new_owner(
    store_factory: StoreFactory,
) -> None:
    other = await store_factory.new()
    async with runtime(await store_factory.new(), lease=30) as a:

        async def run() -> None:
            async with a.session("s"):
                await take_over(other, a, "s")
                await other.send_signal("s", "go", b"not for a", time.time())
                await a.wait_for_signal("s", "go", timeout=5)
                pytest.fail("a fenced runtime received a signal")

        with pytest.raises(SessionBusyError):
            await run()
    assert await other.pending_signals("s") == 1
    assert (await other.load_session("s")).steps == {}


async def test_a_buffered_session_that_lost_its_claim_is_stopped_with_session_busy(
    store_factory: StoreFactory,
) -> None:
    work = Calls()
    other = await store_factory.new()
    async with runtime(
        await store_factory.new(), lease=30, durability="buffered", flush_interval=0.01
    ) as a:

        async def run() -> None:
            async with a.session("s"):
                assert await a.step("before", work, 1) == 10
                await anyio.sleep(0.05)  # the flusher commits "before"
                await take_over(other, a, "s")
                await a.step("after", work, 2)
                await anyio.sleep(0.05)  # the flusher tries to commit "after"
                await a.step("later", work, 3)

        with pytest.raises(SessionBusyError):
            await run()
    assert len((await other.load_session("s")).steps) == 1  # "before" only


async def test_the_heartbeat_stops_a_session_whose_claim_was_taken_over(
    store_factory: StoreFactory,
) -> None:
    other = await store_factory.new()
    # lease 0.3 s: renewed every 0.1 s. Postgres polls for signals every 30 s here, so only the
    # heartbeat can end the signal wait.
    async with runtime(await store_factory.new(), lease=0.3, poll_interval=30) as a:

        async def sleeping() -> None:
            async with a.session("s"):
                await take_over(other, a, "s")
                await anyio.sleep(5)
                pytest.fail("the session went on without its claim")

        async def waiting() -> None:
            async with a.session("w"):
                await take_over(other, a, "w")
                await a.wait_for_signal("w", "never", timeout=5)

        for body in (sleeping, waiting):
            started = time.monotonic()
            with pytest.raises(SessionBusyError) as caught:  # the error itself, not a group
                await body()
            assert type(caught.value) is SessionBusyError
            assert caught.value.session_id in ("s", "w")
            assert time.monotonic() - started < 2.0
    infos = await other.list_sessions("running")
    assert [(i.session_id, i.owner) for i in infos] == [
        ("s", "otherhost:2:y"),
        ("w", "otherhost:2:y"),
    ]


async def test_the_heartbeat_keeps_a_claim_beyond_its_lease(store_factory: StoreFactory) -> None:
    async with (
        runtime(await store_factory.new(), lease=0.25) as a,  # renewed every 0.083 s
        runtime(await store_factory.new()) as b,
    ):
        async with a.session("s"):
            await anyio.sleep(0.8)  # more than three leases
            with pytest.raises(SessionBusyError):
                await open_session(b, "s")
            assert await a.step("still-mine", Calls(), 1) == 10
        assert [i.session_id for i in await b.list_sessions("completed")] == ["s"]


# -- the sessions table ---------------------------------------------------------------------------


async def test_session_status_follows_how_it_ended(store_factory: StoreFactory) -> None:
    work = Calls()
    async with runtime(await store_factory.new()) as rt:
        async with rt.session("ok"):
            await rt.step("a", work, 1)
            await rt.step("b", work, 2)

        async def failing() -> None:
            async with rt.session("bad"):
                await rt.step("a", work, 1)
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await failing()
        with anyio.CancelScope() as scope:
            async with rt.session("stopped"):
                scope.cancel()
                await anyio.sleep(5)
        assert scope.cancelled_caught
        async with rt.session("open"):
            [running] = await rt.list_sessions("running")
            assert (running.session_id, running.status) == ("open", "running")
            assert running.owner == rt.owner_id
            assert running.lease_expires is not None
            assert running.lease_expires > time.time()

    async with runtime(await store_factory.new()) as observer:
        by_id = {info.session_id: info for info in await observer.list_sessions()}
        assert {sid: info.status for sid, info in by_id.items()} == {
            "ok": "completed",
            "bad": "failed",
            "stopped": "interrupted",  # the application's own cancellation: resumable
            "open": "completed",
        }
        assert all(info.owner is None and info.lease_expires is None for info in by_id.values())
        assert (by_id["ok"].steps, by_id["bad"].steps, by_id["stopped"].steps) == (2, 1, 0)
        assert [i.session_id for i in await observer.list_sessions("failed")] == ["bad"]
        assert await observer.list_sessions("running") == []
        with pytest.raises(ValueError, match="status"):
            await observer.list_sessions("done")


async def test_orphaned_sessions_are_those_whose_owner_is_gone(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    await store.claim("lost", "otherhost:9:z", 0.1)
    await store.claim("hung-but-leased", "otherhost:9:z", 30)
    await store.claim("dead", await dead_owner(), 30)
    async with runtime(await store_factory.new(), lease=0.3) as rt:
        async with rt.session("done"):
            pass
        async with rt.session("live"):
            await anyio.sleep(0.2)  # "lost" expires; "live" is renewed by its heartbeat
            orphans = await rt.orphaned_sessions()
            assert sorted(i.session_id for i in orphans) == ["dead", "lost"]
            # An orphan is resumed by opening it.
            async with rt.session("lost"), rt.session("dead"):
                assert await rt.orphaned_sessions() == []


# -- signals between runtimes ---------------------------------------------------------------------


async def test_a_waiter_is_woken_by_a_signal_from_another_runtime(
    store_factory: StoreFactory,
) -> None:
    # Postgres: a poll of 30 s -- a wake-up within a second can only come from LISTEN/NOTIFY.
    poll = 30.0 if store_factory.kind == "postgres" else POLL
    received: list[Any] = []
    async with (
        runtime(await store_factory.new(), poll_interval=poll) as a,
        runtime(await store_factory.new()) as b,
        a.session("s"),
    ):

        async def wait() -> None:
            received.append(await a.wait_for_signal("s", "approve", timeout=10))
            received.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            with anyio.fail_after(5):
                while a._signals.pushed is None:  # noqa: ASYNC110 -- the waiter asked for notices
                    await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # ... and is blocked in its wait
            assert not received
            sent = anyio.current_time()
            await b.signal("s", "approve", {"by": "ada", "ok": True})
    assert received[0] == {"by": "ada", "ok": True}
    assert received[1] - sent < 1.0


async def test_signals_sent_while_a_session_is_not_open_arrive_when_it_opens(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as b:
        for i in range(3):
            await b.signal("s", "go", f"go-{i}")
        await b.signal("s", "stop", "now")
    async with runtime(await store_factory.new()) as a, a.session("s"):
        # Moved into the journal when the session opened: poll_signal sees them without I/O.
        assert a.poll_signal("s", "stop") == "now"
        assert a.poll_signal("s", "go") == "go-0"
        assert await a.wait_for_signal("s", "go", timeout=5) == "go-1"
        assert a.poll_signal("s", "go") == "go-2"
        assert a.poll_signal("s", "go") is None
        with pytest.raises(TimeoutError):
            await a.wait_for_signal("s", "go", timeout=0.1)


async def test_signals_from_another_runtime_are_fifo(store_factory: StoreFactory) -> None:
    received: list[int] = []
    async with (
        runtime(await store_factory.new()) as a,
        runtime(await store_factory.new()) as b,
    ):
        for i in range(3):
            await b.signal("s", "n", i)  # before the session opens
        async with a.session("s"):
            for i in range(3, 5):
                await b.signal("s", "n", i)  # while it is open, before anyone waits

            async def receive() -> None:
                for _ in range(8):
                    received.append(await a.wait_for_signal("s", "n", timeout=5))

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.sleep(0.05)
                for i in range(5, 8):
                    await b.signal("s", "n", i)  # while it waits
    assert received == list(range(8))


async def test_received_signals_replay_in_a_new_runtime_and_are_not_received_again(
    store_factory: StoreFactory,
) -> None:
    async with (
        runtime(await store_factory.new()) as a,
        runtime(await store_factory.new()) as b,
    ):
        await b.signal("s", "go", "x")
        await b.signal("s", "go", "y")
        async with a.session("s"):
            assert await a.wait_for_signal("s", "go", timeout=5) == "x"
            assert await a.wait_for_signal("s", "go", timeout=5) == "y"
        await b.signal("s", "go", "z")  # while the session is not running
    await store_factory.recycle()
    store = await store_factory.new()
    assert await store.pending_signals("s") == 1
    async with runtime(store) as c, c.session("s"):
        assert await c.wait_for_signal("s", "go", timeout=5) == "x"  # replayed, no wait
        assert c.poll_signal("s", "go") == "y"  # replayed from the journal
        assert c.poll_signal("s", "go") == "z"  # new: moved into the journal after x and y
        assert c.poll_signal("s", "go") is None
        with pytest.raises(TimeoutError):
            await c.wait_for_signal("s", "go", timeout=0.1)
        await c.signal("s", "go", "w")
        assert await c.wait_for_signal("s", "go", timeout=5) == "w"
    assert await store.pending_signals("s") == 0
    # Once more, in yet another runtime: everything replays, nothing is received twice, and
    # every receive gives what it gave the first time -- "nothing at hand" and a timeout too.
    async with runtime(await store_factory.new()) as d, d.session("s"):
        assert await d.wait_for_signal("s", "go", timeout=5) == "x"
        assert [d.poll_signal("s", "go") for _ in range(3)] == ["y", "z", None]
        with pytest.raises(TimeoutError):  # timed out then: at once now, though "w" is here
            await d.wait_for_signal("s", "go", timeout=5)
        assert await d.wait_for_signal("s", "go", timeout=5) == "w"


async def test_a_signal_outlives_the_runtime_that_sent_it(store_factory: StoreFactory) -> None:
    durable = store_factory.kind != "memory"  # the memory store is the journal itself
    async with runtime(await store_factory.new()) as a, a.session("s"):
        sender_store = await store_factory.new()
        async with runtime(sender_store) as b:
            await b.signal("s", "approve", "open-session")
            await b.signal("later", "approve", "closed-session")
        if durable:
            await sender_store.aclose()  # the sender's connection is gone too
        assert await a.wait_for_signal("s", "approve", timeout=5) == "open-session"
    async with runtime(await store_factory.new()) as c, c.session("later"):
        assert await c.wait_for_signal("later", "approve", timeout=5) == "closed-session"

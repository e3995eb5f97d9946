"""The session's alarm (``_journaled/alarm.py``): the claim heartbeat sleeps through it, and a
running stream step asks it to look at the stream when its chunks are due to be journaled,
instead of starting a task per stream. Unit tests of :class:`SessionAlarm`, then the promise
it keeps for streams on every store: chunks delivered before a producer stalls are journaled
within the flush interval while it stalls, and a stream that never stalls starts no task.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import JournaledRuntime
from jeevesagent.runtime._core.keys import is_chunks_key
from jeevesagent.runtime._journaled import livestream
from jeevesagent.runtime._journaled.alarm import SessionAlarm

from .conftest import StoreFactory


async def test_an_alarm_nobody_keeps_refuses_and_calls_nothing() -> None:
    alarm = SessionAlarm()
    called: list[str] = []
    assert not alarm.call_at(anyio.current_time(), lambda: called.append("x"))
    await anyio.sleep(0.01)
    assert called == []


async def test_a_call_earlier_than_the_sleepers_deadline_wakes_it_at_that_time() -> None:
    alarm = SessionAlarm()
    alarm.kept = True
    called: list[tuple[str, float]] = []
    done = anyio.Event()

    async def server() -> None:
        with alarm.serving():
            await alarm.sleep(30)  # a heartbeat's sleep: far longer than the test

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        await anyio.wait_all_tasks_blocked()
        start = anyio.current_time()
        assert alarm.call_at(start + 0.05, lambda: called.append(("late", anyio.current_time())))
        assert alarm.call_at(start + 0.02, lambda: called.append(("early", anyio.current_time())))
        assert alarm.call_at(start + 0.05, done.set)
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert [name for name, _ in called] == ["early", "late"]
    assert called[0][1] >= start + 0.02
    assert called[1][1] >= start + 0.05
    assert alarm.kept  # a cancelled server leaves the alarm to its successor


async def test_calls_asked_for_before_the_server_runs_are_served_by_it() -> None:
    alarm = SessionAlarm()
    alarm.kept = True  # started, not running yet
    called: list[str] = []
    assert alarm.call_at(anyio.current_time(), lambda: called.append("due"))

    async def server() -> None:
        with alarm.serving():
            await alarm.sleep(0.05)

    await server()
    assert called == ["due"]


async def test_a_server_that_ends_calls_what_waits_at_once_and_ends_the_alarm() -> None:
    alarm = SessionAlarm()
    alarm.kept = True
    called: list[str] = []

    async def server() -> None:
        with alarm.serving():
            await alarm.sleep(0.01)
            assert alarm.call_at(anyio.current_time() + 3600, lambda: called.append("hour"))
            raise LookupError("the claim was lost")

    with pytest.raises(LookupError):
        await server()
    assert called == ["hour"]  # not an hour later: at once, when its server ended
    assert not alarm.kept
    assert not alarm.call_at(anyio.current_time(), lambda: called.append("again"))
    # A server that returns ends it too.
    alarm.kept = True
    with alarm.serving():
        pass
    assert not alarm.kept


async def test_a_cancelled_sleep_propagates_and_leaves_the_calls_for_a_successor() -> None:
    alarm = SessionAlarm()
    alarm.kept = True
    called: list[str] = []
    with anyio.CancelScope() as scope:
        with alarm.serving():
            assert alarm.call_at(anyio.current_time() + 3600, lambda: called.append("hour"))
            scope.cancel()
            await alarm.sleep(10)
            pytest.fail("the sleep was cancelled")  # pragma: no cover
    assert scope.cancelled_caught
    # The last server left: what waited was called at once, and the alarm stays kept for the
    # heartbeat that goes on in another context of the session.
    assert called == ["hour"]
    assert alarm.kept


# -- streams -------------------------------------------------------------------------------------
async def chunks_then_stall(gate: anyio.Event, stalled: anyio.Event) -> AsyncIterator[int]:
    for i in range(3):
        await anyio.lowlevel.checkpoint()
        yield i
    stalled.set()
    await gate.wait()  # a model that stops sending for a while
    yield 3


async def journaled_chunks(rt: JournaledRuntime, sid: str) -> int:
    journal = await rt._backend.load_session(sid)
    return sum(1 for key in journal.streams if is_chunks_key(key))


async def test_chunks_delivered_before_a_stall_are_journaled_while_it_stalls(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    gate, stalled = anyio.Event(), anyio.Event()
    async with JournaledRuntime(store, stream_flush_interval=0.05) as rt:
        async with rt.session("stall"):
            got: list[int] = []

            async def consume() -> None:
                producer = functools.partial(chunks_then_stall, gate, stalled)  # not arguments
                async for chunk in rt.stream_step("reply", producer):
                    got.append(chunk)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                with anyio.fail_after(10):
                    await stalled.wait()
                    # While the producer stalls, the three chunks get journaled (one batch).
                    while not await journaled_chunks(rt, "stall"):  # noqa: ASYNC110 (a store)
                        await anyio.sleep(0.01)
                assert got == [0, 1, 2]
                gate.set()
        assert got == [0, 1, 2, 3]
        async with rt.session("stall"):  # complete: replayed whole, the producer not called
            never = functools.partial(chunks_then_stall, anyio.Event(), anyio.Event())
            assert [c async for c in rt.stream_step("reply", never)] == [0, 1, 2, 3]


async def test_a_stream_that_never_stalls_starts_no_task_where_the_heartbeat_keeps_the_alarm(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    start_flush = livestream._start_flush
    monkeypatch.setattr(livestream, "_start_flush", lambda ref: started.append(start_flush(ref)))

    async def quick() -> AsyncIterator[int]:
        for i in range(50):
            yield i

    store = await store_factory.new()
    rt = JournaledRuntime(store, stream_flush_interval=math.inf)
    async with rt, rt.session("quick"):
        for n in range(5):
            assert [c async for c in rt.stream_step(f"s{n}", quick)] == list(range(50))
        claimed = rt._states["quick"].claimed
    if claimed:  # a store with claims: the heartbeat serves the alarm
        assert started == []
    else:  # no heartbeat: a task per stream, as before the alarm
        assert len(started) == 5

"""Suspension (DESIGN §7), in one process, on every store and both event loops: under ``serve``
a long ``wait_for_signal`` or ``sleep`` is suspended (status ``waiting``, no claim, no task), and
a signal or the wake-up time makes a worker run it again, with every recorded step replayed.
Across processes (a signal from the CLI, a worker restart): test_suspension_processes.py."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    SessionCancelledError,
    current_runtime,
    workflow,
)

from .conftest import StoreFactory

POLL = 0.02
SUSPEND = 0.2  # serve(suspend_after=...) in these tests
RAN: Counter[tuple[str, str]] = Counter()  # (session, step) -> runs, in this process


async def effect(step: str, value: Any) -> Any:
    RAN[(current_runtime().current_session_id(), step)] += 1
    return value


@workflow(name="susp.approval")
async def approval(amount: int) -> str:
    rt = current_runtime()
    sid = rt.current_session_id()
    assert sid is not None
    quote = await rt.step("quote", effect, "quote", amount * 2)
    try:
        answer = await rt.wait_for_signal(sid, "approve")
    except Exception:  # a body's own except Exception never swallows a suspension
        await rt.step("swallowed", effect, "swallowed", 0)
        raise
    done = await rt.step("book", effect, "book", f"{answer}:{quote}")
    return str(done)


@workflow(name="susp.nap")
async def nap(seconds: float) -> float:
    rt = current_runtime()
    await rt.step("before", effect, "before", 1)
    await rt.sleep("nap", seconds)
    return float(await rt.step("after", effect, "after", time.time()))


@workflow(name="susp.deadline")
async def deadline(timeout: float) -> str:
    rt = current_runtime()
    sid = rt.current_session_id()
    assert sid is not None
    await rt.step("before", effect, "before", 1)
    try:
        answer = await rt.wait_for_signal(sid, "reply", timeout=timeout)
    except TimeoutError:
        return str(await rt.step("gave up", effect, "gave up", "timed out"))
    return str(await rt.step("got", effect, "got", answer))


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    RAN.clear()


def runtime(store: Any, **options: Any) -> JournaledRuntime:
    options.setdefault("poll_interval", POLL)
    return JournaledRuntime(store, **options)


@asynccontextmanager
async def worker(rt: JournaledRuntime, *workflows: Any) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: rt.serve(*workflows, suspend_after=SUSPEND, task_status=task_status)
        )
        yield
        tg.cancel_scope.cancel()


async def until_status(rt: JournaledRuntime, sid: str, status: str, within: float = 10.0) -> Any:
    with anyio.fail_after(within):
        while (info := await rt._backend.session_info(sid)) is None or info.status != status:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return info


async def test_a_waiting_session_is_suspended_and_a_signal_from_another_runtime_resumes_it(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, worker(rt, approval):
        await rt.start(approval, "s1", 21)
        info = await until_status(rt, "s1", "waiting")
        assert (info.owner, info.lease_expires) == (None, None)
        assert (info.waiting_for, info.wake_at) == ("approve", None)
        assert "s1" not in rt._states  # no task, no state: nothing of it is held here
        other = await store_factory.new() if store_factory.kind != "memory" else store
        async with runtime(other) as sender:
            await sender.signal("s1", "approve", "yes")
        assert await rt.result("s1", timeout=10) == "yes:42"
    assert RAN[("s1", "quote")] == 1
    assert RAN[("s1", "book")] == 1
    assert RAN[("s1", "swallowed")] == 0


async def test_a_signal_is_received_exactly_once_and_the_next_wait_suspends_again(
    store_factory: StoreFactory,
) -> None:
    @workflow(name="susp.twice")
    async def twice() -> list[str]:
        rt = current_runtime()
        sid = rt.current_session_id()
        assert sid is not None
        first = await rt.wait_for_signal(sid, "go")
        await rt.step("between", effect, "between", 0)
        second = await rt.wait_for_signal(sid, "go")
        return [first, second]

    store = await store_factory.new()
    async with runtime(store) as rt, worker(rt, twice):
        await rt.start(twice, "t1")
        await until_status(rt, "t1", "waiting")
        await rt.signal("t1", "go", "one")
        with anyio.fail_after(10):  # received, then suspended again in the second wait
            while RAN[("t1", "between")] == 0:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        info = await until_status(rt, "t1", "waiting")
        assert info.waiting_for == "go"
        await rt.signal("t1", "go", "two")
        assert await rt.result("t1", timeout=10) == ["one", "two"]
        assert await store.pending_signals("t1") == 0
    assert RAN[("t1", "between")] == 1


async def test_a_suspended_sleep_wakes_on_time(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, worker(rt, nap):
        started = time.time()
        await rt.start(nap, "n1", 1.0)
        info = await until_status(rt, "n1", "waiting")
        assert info.waiting_for is None
        assert info.wake_at is not None
        assert started + 1.0 <= info.wake_at <= time.time() + 1.0
        finished = await rt.result("n1", timeout=10)
    assert finished >= info.wake_at
    late = finished - info.wake_at
    assert late < 2.0, late  # woken by the worker's timer, not a long poll
    assert RAN[("n1", "before")] == 1
    assert RAN[("n1", "after")] == 1


async def test_a_waits_deadline_holds_across_suspension_and_its_expiry_is_journaled(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, worker(rt, deadline):
        started = time.time()
        await rt.start(deadline, "d1", 1.0)
        info = await until_status(rt, "d1", "waiting")
        assert info.waiting_for == "reply"
        assert info.wake_at is not None
        assert info.wake_at <= started + 1.0 + 1.0
        assert await rt.result("d1", timeout=10) == "timed out"
        assert time.time() >= info.wake_at
    journal = await store.load_session("d1")
    assert "o:reply:0" in journal.steps  # the timeout, journaled
    assert "d:reply:0" in journal.steps  # the deadline, journaled
    assert RAN[("d1", "before")] == 1
    assert RAN[("d1", "gave up")] == 1
    # A signal that comes after the timeout is left for a next wait: never received here.
    async with runtime(store) as rt:
        await rt.signal("d1", "reply", "late")
        assert await rt.run(deadline, "d1", 1.0) == "timed out"


async def test_cancel_ends_a_waiting_session_cancelled(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, worker(rt, approval):
        await rt.start(approval, "c1", 1)
        await until_status(rt, "c1", "waiting")
        await rt.cancel("c1")
        assert await rt.handle("c1").status() == "cancelled"
        with pytest.raises(SessionCancelledError):
            await rt.result("c1", timeout=10)
        await rt.signal("c1", "approve", "too late")
        await anyio.sleep(3 * POLL)
        assert await rt.handle("c1").status() == "cancelled"
    assert RAN[("c1", "book")] == 0


async def test_run_inline_and_plain_sessions_never_suspend(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(3 * SUSPEND)
            await rt.signal("r1", "approve", "ok")

        tg.start_soon(later)
        assert await rt.run(approval, "r1", 1) == "ok:2"
        assert await rt.handle("r1").status() == "completed"

"""Workflows (DESIGN §6), in one process, on every store and both event loops: run, start,
result, cancel, fork and serve. Across processes: test_workflow_processes.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    JournalMismatchError,
    SessionBusyError,
    SessionCancelledError,
    current_runtime,
    workflow,
)

from .conftest import StoreFactory

POLL = 0.02
# Steps that ran, by (session, step), in this process.
RAN: Counter[tuple[str, str]] = Counter()
GATES: dict[str, anyio.Event] = {}


def runtime(store: Any, **options: Any) -> JournaledRuntime:
    options.setdefault("poll_interval", POLL)
    return JournaledRuntime(store, **options)


async def effect(step: str, value: Any) -> Any:
    """A side effect, counted by (session, step); the session is the caller's (not an argument,
    so a forked session's steps have the same keys as its source's)."""
    RAN[(current_runtime().current_session_id(), step)] += 1
    return value


@workflow(name="test.plan")
async def plan(request: str, *, budget: int = 1) -> dict[str, Any]:
    rt = current_runtime()
    outline = await rt.step("outline", effect, "outline", f"outline of {request}")
    await rt.sleep("pause", 0.001)
    detail = await rt.step("detail", effect, "detail", budget * 2)
    return {"outline": outline, "detail": detail}


@workflow(name="test.gated")
async def gated(gate: str) -> str:
    rt = current_runtime()
    await rt.step("before", effect, "before", 1)
    await GATES.setdefault(gate, anyio.Event()).wait()
    await rt.step("after", effect, "after", 2)
    return f"passed {gate}"


@workflow(name="test.fails")
async def fails(message: str) -> None:
    rt = current_runtime()
    await rt.step("first", effect, "first", 1)
    if GATES.get(message) is None:
        raise LookupError(message)


@workflow(name="test.other")
async def other() -> str:
    return "other"


@workflow(name="test.counted")
async def counted(city: str) -> dict[str, Any]:
    rt = current_runtime()
    RAN[(rt.current_session_id(), "body")] += 1
    return {"city": city, "n": await rt.step("n", effect, "n", len(city))}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()
    GATES.clear()


async def wait_status(rt: JournaledRuntime, sid: str, status: str, within: float = 10) -> None:
    with anyio.fail_after(within):
        while await rt.handle(sid).status() != status:  # noqa: ASYNC110 -- the store's state
            await anyio.sleep(POLL)


# -- run --------------------------------------------------------------------------------------


async def test_run_records_the_workflow_and_returns_its_result_again_without_running(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        first = await rt.run(plan, "trip-1", "Lisbon", budget=3)
        assert first == {"outline": "outline of Lisbon", "detail": 6}
        info = (await rt.list_sessions("completed"))[0]
        assert (info.session_id, info.workflow) == ("trip-1", "test.plan")
    async with runtime(await store_factory.new()) as rt:
        assert await rt.run(plan, "trip-1", "Lisbon", budget=3) == first
        assert await rt.run("test.plan", "trip-1", "Lisbon", budget=3) == first
        assert await rt.result("trip-1") == first
    assert RAN == {("trip-1", "outline"): 1, ("trip-1", "detail"): 1}


async def test_other_arguments_or_another_workflow_for_a_session_are_refused(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        await rt.run(plan, "trip-1", "Lisbon")
        with pytest.raises(JournalMismatchError, match="other arguments") as info:
            await rt.run(plan, "trip-1", "Porto")
        assert info.value.session_id == "trip-1"
        with pytest.raises(JournalMismatchError, match="other arguments"):
            await rt.start(plan, "trip-1", "Lisbon", budget=2)
        with pytest.raises(JournalMismatchError, match=r"runs workflow 'test\.plan'"):
            await rt.start(other, "trip-1")
        async with rt.session("plain"):
            await rt.step("x", lambda: 1)
        with pytest.raises(JournalMismatchError, match="plain session"):
            await rt.run(plan, "plain", "Lisbon")
    assert RAN[("trip-1", "outline")] == 1


async def test_a_failed_run_raises_unchanged_and_resumes_when_run_again(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        with pytest.raises(LookupError, match="not yet"):
            await rt.run(fails, "f-1", "not yet")
        assert [i.status for i in await rt.list_sessions()] == ["failed"]
        with pytest.raises(LookupError, match="not yet"):
            await rt.result("f-1")  # the recorded failure, re-raised with its type
        GATES["not yet"] = anyio.Event()  # now it succeeds
        assert await rt.run(fails, "f-1", "not yet") is None
        assert await rt.handle("f-1").status() == "completed"
        assert await rt.result("f-1") is None
    assert RAN[("f-1", "first")] == 1, "the step recorded in the failed run replays"


async def snapshot(store: Any) -> tuple[Any, ...]:
    """Everything the store holds about its sessions: their sessions rows and journal rows."""
    infos = await store.list_sessions()
    journals = [await store.load_session(i.session_id) for i in infos]
    return infos, [(j.steps, j.streams) for j in journals]


async def test_run_of_a_completed_session_reads_its_result_and_writes_nothing(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime(await store_factory.new()) as rt:
        first = await rt.run(counted, "done-1", "Lisbon")
        await rt.run(counted, "done-2", "Porto")
    assert first == {"city": "Lisbon", "n": 6}
    store = await store_factory.new()
    before = await snapshot(store)
    assert [(i.status, i.owner) for i in before[0]] == [("completed", None)] * 2
    # What the second run calls on the store: no claim, no bulk load, no write of any kind.
    called: Counter[str] = Counter()
    for name in ("claim", "release", "load_session", "append", "create_session"):
        real = getattr(store, name)

        async def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            called[_name] += 1
            return await _real(*args)

        monkeypatch.setattr(store, name, spy)
    commits = store.commits
    async with runtime(store) as rt:
        assert await rt.run(counted, "done-1", "Lisbon") == first
        assert await rt.run("test.counted", "done-1", "Lisbon") == first
        assert not called, called
        with pytest.raises(JournalMismatchError, match="other arguments") as info:
            await rt.run(counted, "done-1", "Porto")
        assert info.value.session_id == "done-1"
        with pytest.raises(JournalMismatchError, match=r"runs workflow 'test\.counted'"):
            await rt.run(plan, "done-1", "Lisbon")
    assert set(called) <= {"create_session"}, called  # the mismatches: refused as before
    assert store.commits == commits
    monkeypatch.undo()
    assert await snapshot(store) == before
    assert RAN == {
        ("done-1", "body"): 1,
        ("done-1", "n"): 1,
        ("done-2", "body"): 1,
        ("done-2", "n"): 1,
    }


async def test_run_again_while_the_session_completes_returns_the_same_result(
    store_factory: StoreFactory,
) -> None:
    """A second runtime runs the session while the first one is finishing it: it is refused
    (busy) while the body runs, and once the session completes -- whichever path sees it
    completed, the claim-and-load one or the result lookup -- returns the same result."""
    async with (
        runtime(await store_factory.new()) as first,
        runtime(await store_factory.new()) as second,
        anyio.create_task_group() as tg,
    ):
        results: list[str] = []
        gate = GATES["go"] = anyio.Event()

        async def run_first() -> None:
            results.append(await first.run(gated, "race-1", "go"))

        tg.start_soon(run_first)
        with anyio.fail_after(10):
            while not RAN[("race-1", "before")]:  # noqa: ASYNC110 -- a counter
                await anyio.sleep(POLL)
        gate.set()
        with anyio.fail_after(10):
            while True:
                try:
                    results.append(await second.run(gated, "race-1", "go"))
                    break
                except SessionBusyError:
                    await anyio.sleep(0.001)
    assert results == ["passed go", "passed go"]
    assert RAN == {("race-1", "before"): 1, ("race-1", "after"): 1}
    async with runtime(await store_factory.new()) as rt:
        assert await rt.handle("race-1").status() == "completed"
        assert await rt.run(gated, "race-1", "go") == "passed go"


# -- start and serve --------------------------------------------------------------------------


async def test_start_makes_a_pending_session_that_a_worker_runs(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as starter:
        handle = await starter.start("test.plan", "trip-2", "Oslo")
        assert handle.session_id == "trip-2"
        assert await handle.status() == "pending"
        again = await starter.start(plan, "trip-2", "Oslo")  # idempotent
        assert await again.status() == "pending"
        async with runtime(await store_factory.new()) as worker, anyio.create_task_group() as tg:
            await tg.start(worker.serve, plan)  # returns once the worker has looked for work
            with anyio.fail_after(10):
                result = await handle.result()
            tg.cancel_scope.cancel()
    assert result == {"outline": "outline of Oslo", "detail": 2}
    assert RAN == {("trip-2", "outline"): 1, ("trip-2", "detail"): 1}


async def test_serve_runs_at_most_concurrency_sessions_and_only_its_workflows(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        for i in range(6):
            await rt.start(gated, f"g-{i}", "gate")
        await rt.start(other, "not-served")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rt.serve(gated, concurrency=2))
            with anyio.fail_after(10):
                while RAN[("g-0", "before")] + RAN[("g-1", "before")] < 2:  # noqa: ASYNC110
                    await anyio.sleep(POLL)
            await anyio.sleep(0.2)
            running = [i.session_id for i in await rt.list_sessions("running")]
            assert sorted(running) == ["g-0", "g-1"], "two at once, oldest first"
            GATES["gate"].set()
            with anyio.fail_after(20):
                for i in range(6):
                    assert await rt.result(f"g-{i}") == "passed gate"
            assert await rt.handle("not-served").status() == "pending"
            tg.cancel_scope.cancel()
    assert all(RAN[(f"g-{i}", "before")] == 1 for i in range(6))


async def test_a_cancelled_serve_leaves_its_sessions_interrupted_for_the_next_worker(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        await rt.start(gated, "g-1", "later")
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.serve, gated)
            with anyio.fail_after(10):
                while not RAN[("g-1", "before")]:  # noqa: ASYNC110 -- a counter
                    await anyio.sleep(POLL)
            tg.cancel_scope.cancel()
        assert await rt.handle("g-1").status() == "interrupted"
    async with runtime(await store_factory.new()) as rt, anyio.create_task_group() as tg:
        GATES["later"].set()
        tg.start_soon(rt.serve, gated)
        with anyio.fail_after(10):
            assert await rt.result("g-1") == "passed later"
        tg.cancel_scope.cancel()
    assert RAN == {("g-1", "before"): 1, ("g-1", "after"): 1}


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_of_a_pending_session_means_it_never_runs(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new()) as rt:
        handle = await rt.start(plan, "c-1", "Rome")
        await handle.cancel()
        assert await handle.status() == "cancelled"
        with pytest.raises(SessionCancelledError) as info:
            await handle.result()
        assert info.value.session_id == "c-1"
        with pytest.raises(SessionCancelledError):
            await rt.run(plan, "c-1", "Rome")
        with pytest.raises(SessionCancelledError):
            async with rt.session("c-1"):
                pass
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.serve, plan)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
        assert await handle.status() == "cancelled"
    assert not RAN


async def test_cancel_stops_a_running_session_and_the_step_in_flight_records_nothing(
    store_factory: StoreFactory,
) -> None:
    async with (
        runtime(await store_factory.new()) as worker,
        runtime(await store_factory.new()) as client,
        anyio.create_task_group() as tg,
    ):
        await client.start(gated, "c-2", "never")
        tg.start_soon(worker.serve, gated)
        await wait_status(client, "c-2", "running")
        with anyio.fail_after(10):
            while not RAN[("c-2", "before")]:  # noqa: ASYNC110 -- a counter
                await anyio.sleep(POLL)
        sent = anyio.current_time()
        await client.cancel("c-2")
        with pytest.raises(SessionCancelledError):
            await client.result("c-2", timeout=10)
        took = anyio.current_time() - sent
        tg.cancel_scope.cancel()
    assert took < 2.0, f"cancel took {took:.2f} s"
    assert RAN == {("c-2", "before"): 1}
    async with runtime(await store_factory.new()) as rt:
        assert await rt.handle("c-2").status() == "cancelled"
        await rt.cancel("c-2")  # an ended session: nothing changes
        assert await rt.handle("c-2").status() == "cancelled"
        with pytest.raises(LookupError):
            await rt.cancel("nobody")


# -- fork -------------------------------------------------------------------------------------


async def test_fork_replays_the_prefix_and_runs_the_rest(store_factory: StoreFactory) -> None:
    async with runtime(await store_factory.new()) as rt:
        await rt.run(plan, "src", "Paris")
        fork = await rt.fork("src", "src-2", at="detail")
        assert await fork.status() == "pending"
        assert await rt.run(plan, "src-2", "Paris") == {"outline": "outline of Paris", "detail": 2}
        whole = await rt.fork("src", "src-3")
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.serve, plan)
            with anyio.fail_after(10):
                assert await whole.result() == {"outline": "outline of Paris", "detail": 2}
            tg.cancel_scope.cancel()
        with pytest.raises(ValueError, match="no step named 'nope'"):
            await rt.fork("src", "src-4", at="nope")
        with pytest.raises(JournalMismatchError, match="exists"):
            await rt.fork("src", "src-2")
    assert RAN == {("src", "outline"): 1, ("src", "detail"): 1, ("src-2", "detail"): 1}


# -- registry ---------------------------------------------------------------------------------


def test_workflow_names_are_unique_and_functions_must_be_registered() -> None:
    async def not_registered() -> None:
        pass

    with pytest.raises(ValueError, match="taken"):
        workflow(name="test.plan")(not_registered)
    with pytest.raises(RuntimeError, match="outside a workflow"):
        current_runtime()
    rt = JournaledRuntime()
    with pytest.raises(TypeError, match="not a registered workflow"):
        anyio.run(rt.run, not_registered, "s")
    with pytest.raises(LookupError, match="no workflow named"):
        anyio.run(rt.run, "nobody.knows", "s")

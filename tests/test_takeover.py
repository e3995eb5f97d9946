"""Taking over a session whose owner's process died never shows it as ended: ``result()`` waiting
in another task (or process) keeps waiting, and the session is never left ``failed`` (a status
workers do not resume) between the dead owner's claim and the new one."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from jeevesagent.runtime import JournaledRuntime, current_runtime, workflow

from .conftest import StoreFactory
from .test_coordination import dead_owner


@workflow(name="test.takeover")
async def double(n: int) -> int:
    return int(await current_runtime().step("double", lambda: n * 2))


async def test_result_waits_through_a_takeover_from_a_dead_owner(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with JournaledRuntime(store, poll_interval=0.01) as rt:
        await rt.start(double, "s", 21)
        await store.claim("s", await dead_owner(), 30)  # left running by a process now gone
        results: list[int] = []
        statuses: list[str] = []
        done = anyio.Event()

        async def watch_status() -> None:
            while True:  # as often as the store answers
                statuses.append(await rt.handle("s").status())
                await anyio.lowlevel.checkpoint()

        async def wait_result() -> None:
            results.append(await rt.result("s", timeout=10))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_status)
            tg.start_soon(wait_result)
            async with JournaledRuntime(await store_factory.new(), poll_interval=0.01) as worker:
                assert await worker.run(double, "s", 21) == 42  # takes the dead owner's claim
            with anyio.fail_after(10):
                await done.wait()
            tg.cancel_scope.cancel()
    assert results == [42]
    assert "failed" not in statuses, statuses

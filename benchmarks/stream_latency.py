"""Live stream read latency across processes (issue 13, part B): a producer in a child process
journals a stream step paced at one chunk per 5 ms (the runtime's defaults: a batch per 0.1 s);
this process follows it with ``read_stream``. Each chunk carries its yield time; the latency is
its arrival here minus that time (one host clock). On SQLite (the reader polls) and Postgres
(readers are woken by NOTIFY).

    python benchmarks/stream_latency.py [--chunks 200] [--no-postgres]

A benchmark, not a test: nothing asserts timing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import anyio
from stores import postgres_dsn

from jeevesagent.runtime import PostgresRuntime, SqliteRuntime

ROOT = pathlib.Path(__file__).resolve().parent.parent

PRODUCER = """
import sys, time, anyio
from jeevesagent.runtime import PostgresRuntime, SqliteRuntime

async def paced(n, every):
    for i in range(n):
        await anyio.sleep(every)
        yield i, time.time()

async def main(target, n):
    if target.startswith("postgres"):
        rt = await PostgresRuntime.connect(target)
        await rt.init_schema()
    else:
        rt = SqliteRuntime(target)
    async with rt, rt.session("paced"):
        async for _ in rt.stream_step("reply", paced, n, 0.005):
            pass

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def measure(target: str, chunks: int) -> tuple[float, float, float]:
    """(median, p90, max) ms from a chunk's yield in the child to its arrival here."""
    if target.startswith("postgres"):
        reader = await PostgresRuntime.connect(target, poll_interval=0.1)
        await reader.init_schema()
    else:
        reader = SqliteRuntime(target, poll_interval=0.1)
        async with reader.session("warm-up"):  # create the journal file before the child opens it
            pass
    lags: list[float] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", PRODUCER, target, str(chunks)]
    async with reader, await anyio.open_process(command, env=env, stdout=None) as child:
        with anyio.fail_after(120):
            async for _, at in reader.read_stream("paced", "reply"):
                lags.append((time.time() - at) * 1000)
        await child.wait()
    if len(lags) != chunks:
        raise RuntimeError(f"read {len(lags)} chunks, not {chunks}")
    return statistics.median(lags), statistics.quantiles(lags, n=10)[-1], max(lags)


async def main(chunks: int, postgres: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        median, p90, worst = await measure(str(pathlib.Path(tmp) / "j.sqlite3"), chunks)
        print(f"SQLite: median {median:.1f} ms, p90 {p90:.1f} ms, max {worst:.1f} ms")
    with postgres_dsn(postgres, print) as dsn:
        if dsn is not None:
            median, p90, worst = await measure(dsn, chunks)
            print(f"Postgres: median {median:.1f} ms, p90 {p90:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--no-postgres", action="store_true")
    ns = parser.parse_args()
    anyio.run(main, ns.chunks, not ns.no_postgres)

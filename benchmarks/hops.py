"""What a round trip between the event loop and another thread costs on this machine.

    python benchmarks/hops.py [--backend asyncio|trio] [--calls 2000]

Each line: a no-op handed to another thread and awaited, ``--calls`` times after as many untimed
(warm-up), as the median of two passes: wall time per call, the event loop thread's CPU per call
(``time.thread_time``) and the rest of the process's CPU (the other thread). For scale, three
things that never leave the loop's thread. The SQLite store's writes and, under trio, every
Postgres call pay one such round trip; so do the floors of ``run.py`` (``anyio.to_thread``).
A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from jeevesagent.runtime._backends.thread import WorkerThread


def _noop(_: object = None) -> None:
    return None


async def _measure(label: str, op: Callable[[], Awaitable[object]], calls: int) -> str:
    passes = []
    for _ in range(3):  # the first pass warms up
        wall, loop, cpu = time.perf_counter(), time.thread_time(), time.process_time()
        for _ in range(calls):
            await op()
        wall = time.perf_counter() - wall
        loop = time.thread_time() - loop
        cpu = time.process_time() - cpu
        passes.append((wall, loop, max(0.0, cpu - loop)))
    w, lo, other = (statistics.median(p[i] for p in passes[1:]) / calls * 1e6 for i in range(3))
    return f"| {label} | {w:.1f} | {lo:.1f} | {other:.1f} |"


async def main(backend: str, calls: int) -> None:
    worker: WorkerThread[None] = WorkerThread("hops", lambda: None, lambda _: None)
    limiter = anyio.CapacityLimiter(1)

    async def event() -> None:
        e = anyio.Event()
        e.set()
        await e.wait()

    async def shielded() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()

    ops: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("the SQLite store's worker thread (`WorkerThread.run`)", lambda: worker.run(_noop)),
        (
            "`anyio.to_thread.run_sync`, CapacityLimiter(1) (the floors)",
            lambda: anyio.to_thread.run_sync(_noop, limiter=limiter),
        ),
    ]
    if backend == "asyncio":
        loop = asyncio.get_running_loop()
        ops.append(("`loop.run_in_executor`", lambda: loop.run_in_executor(None, _noop)))
    ops += [
        ("no thread: `anyio.lowlevel.checkpoint()`", anyio.lowlevel.checkpoint),
        ("no thread: `anyio.Event` set and awaited", event),
        ("no thread: a checkpoint in a shielded `anyio.CancelScope`", shielded),
    ]
    print(f"{backend}, {calls} calls per pass; µs per call, median of 2 passes after a warm-up")
    print("| round trip | wall | event-loop CPU | other threads CPU |")
    print("| --- | --- | --- | --- |")
    try:
        for label, op in ops:
            print(await _measure(label, op, calls), flush=True)
    finally:
        await worker.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(main, args.backend, args.calls, backend=args.backend)

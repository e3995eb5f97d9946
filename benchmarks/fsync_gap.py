"""What a durable SQLite commit costs on this machine, by how long the disk was idle before it.

    python benchmarks/fsync_gap.py [--backend asyncio|trio] [--rounds 15] [--postgres DSN]

On a raw ``sqlite3`` connection (WAL, ``synchronous=FULL``, each call sent through
``anyio.to_thread`` like the floors of ``run.py``): one warm insert + commit, then a pause -- none,
``time.sleep`` of 0.2 to 5 ms, or a ``gc.collect()`` (what the benchmarks' ``settle()`` does) --
then the timed insert + commit of one ~1 KB row. Prints the median per pause. With
``--postgres`` (asyncio only), the same on one raw asyncpg connection (autocommitted inserts,
the floor of ``run.py``) to that server. ``run.py``'s stream
rows (one commit each) depend on it: a timed section that starts right after a pause pays more
for its commit than one that starts right after another commit, so a floor and its workload must
be preceded by the same sequence. A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable

import anyio


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    return conn


def _insert(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (?, ?)", (key, b"x" * 1000))
    conn.execute("COMMIT")


def _pauses() -> dict[str, Callable[[], object] | None]:
    def sleep(ms: float) -> Callable[[], object]:
        return lambda: time.sleep(ms / 1000)

    return {
        "none": None,
        "sleep 0.2 ms": sleep(0.2),
        "sleep 0.5 ms": sleep(0.5),
        "sleep 1 ms": sleep(1),
        "sleep 2 ms": sleep(2),
        "sleep 5 ms": sleep(5),
        "gc.collect()": gc.collect,
    }


async def _postgres(dsn: str, rounds: int) -> dict[str, list[float]]:
    import asyncpg

    pauses = _pauses()
    samples: dict[str, list[float]] = {name: [] for name in pauses}
    conn = await asyncpg.connect(dsn)
    try:
        table = f"fsync_gap_{os.getpid()}"
        await conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v BYTEA)")
        insert = f"INSERT INTO {table} VALUES ($1, $2)"
        try:
            for r in range(rounds):
                for name, pause in pauses.items():
                    await conn.execute(insert, f"{r}-{name}-warm", b"")
                    if pause is not None:
                        pause()
                    start = time.perf_counter_ns()
                    await conn.execute(insert, f"{r}-{name}", b"x" * 1000)
                    samples[name].append((time.perf_counter_ns() - start) / 1000)
        finally:
            await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    return samples


def _report(what: str, rounds: int, samples: dict[str, list[float]]) -> None:
    print(f"{what}: insert + commit after a warm one, then a pause; medians of {rounds} rounds")
    base = statistics.median(samples["none"])
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"  {name:14s} {med:8.0f} µs  ({med / base:.2f}x; min {min(values):.0f})")


async def main(rounds: int, postgres: str | None) -> None:
    pauses = _pauses()
    samples: dict[str, list[float]] = {name: [] for name in pauses}
    limiter = anyio.CapacityLimiter(1)
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            for name, pause in pauses.items():  # interleaved: every pause once per round
                path = os.path.join(folder, f"{r}-{len(samples[name])}-{id(pause)}.db")
                conn = await anyio.to_thread.run_sync(_connect, path, limiter=limiter)
                try:
                    await anyio.to_thread.run_sync(_insert, conn, "warm", limiter=limiter)
                    if pause is not None:
                        pause()
                    start = time.perf_counter_ns()
                    await anyio.to_thread.run_sync(_insert, conn, "timed", limiter=limiter)
                    samples[name].append((time.perf_counter_ns() - start) / 1000)
                finally:
                    conn.close()
    _report("SQLite (FULL)", rounds, samples)
    if postgres:
        _report("Postgres", rounds, await _postgres(postgres, rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--postgres", metavar="DSN", help="also a raw asyncpg connection")
    args = parser.parse_args()
    if args.postgres and args.backend != "asyncio":
        parser.error("--postgres runs asyncpg, which needs --backend asyncio")
    anyio.run(main, args.rounds, args.postgres, backend=args.backend)

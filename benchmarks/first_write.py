"""The first recorded write of a SQLite session costs more than the next: how much, and where.

    python benchmarks/first_write.py [--backend asyncio|trio] [--journals 21]

For each of ``--journals`` fresh journal files: a runtime records one step in a session (so the
file and its write-ahead log exist), opens a second session, and times its first step (the first
write after the session's claim, which is committed lazily -- without an fsync -- so this write's
fsync also carries the claim's pages) and its second step, wall time and time inside the store's
worker thread (the write transaction, its fsync included). Then the same on a raw ``sqlite3``
connection: one ``synchronous=NORMAL`` commit (like a claim), then two plain FULL inserts, each
sent through ``anyio.to_thread`` (the floor of ``run.py``). Prints medians. The "stream record" row
of ``run.py`` times a session's first write this way (its stream's one commit).
A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

import anyio

from jeevesagent.runtime import SqliteRuntime
from jeevesagent.runtime._backends import sqlite as sqlite_store

_in_thread: list[float] = []


def _timed_batch(original: Any) -> Any:
    def run(conn: sqlite3.Connection, jobs: list[Any]) -> None:
        start = time.perf_counter()
        original(conn, jobs)
        _in_thread.append(time.perf_counter() - start)

    return run


def _one() -> int:
    return 1


async def _ours(folder: str) -> tuple[float, float, float, float]:
    rt = SqliteRuntime(os.path.join(folder, "journal.db"))
    async with rt:
        async with rt.session("first"):
            await rt.step("w", _one)
        async with rt.session("s"):
            _in_thread.clear()
            start = time.perf_counter()
            await rt.step("a", _one)
            first, first_in = time.perf_counter() - start, _in_thread[-1]
            start = time.perf_counter()
            await rt.step("b", _one)
            second, second_in = time.perf_counter() - start, _in_thread[-1]
    return first, first_in, second, second_in


async def _raw(folder: str) -> tuple[float, float]:
    conn = sqlite3.connect(
        os.path.join(folder, "raw.db"), check_same_thread=False, isolation_level=None
    )
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=full")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v BLOB)")
    limiter = anyio.CapacityLimiter(1)

    def insert(table: str, key: str, sync: str = "FULL") -> None:
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (key, b"x" * 8))
        conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous=FULL")

    try:
        await anyio.to_thread.run_sync(insert, "t", "warm", limiter=limiter)
        await anyio.to_thread.run_sync(insert, "c", "claim", "NORMAL", limiter=limiter)
        start = time.perf_counter()
        await anyio.to_thread.run_sync(insert, "t", "a", limiter=limiter)
        first = time.perf_counter() - start
        start = time.perf_counter()
        await anyio.to_thread.run_sync(insert, "t", "b", limiter=limiter)
        return first, time.perf_counter() - start
    finally:
        conn.close()


async def main(journals: int) -> None:
    ours: list[tuple[float, float, float, float]] = []
    raw: list[tuple[float, float]] = []
    for _ in range(journals):
        with tempfile.TemporaryDirectory(prefix="jeevesagent-first-") as folder:
            ours.append(await _ours(folder))
            raw.append(await _raw(folder))

    def med(rows: list[Any], i: int) -> float:
        return statistics.median(r[i] for r in rows) * 1e6

    print(f"medians over {journals} fresh journals, µs")
    print(f"runtime: first step of a session {med(ours, 0):.0f} ({med(ours, 1):.0f} in the store's")
    print(f"         thread), second step {med(ours, 2):.0f} ({med(ours, 3):.0f} in the thread)")
    print(f"raw:     first FULL insert after a NORMAL commit {med(raw, 0):.0f},")
    print(f"         the next one {med(raw, 1):.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--journals", type=int, default=21)
    args = parser.parse_args()
    sqlite_store.write_batch = _timed_batch(sqlite_store.write_batch)  # before any store exists
    anyio.run(main, args.journals, backend=args.backend)

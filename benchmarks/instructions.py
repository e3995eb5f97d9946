"""Instructions per unit of work on SQLite, ours against its floor, counted by callgrind.

    python benchmarks/instructions.py [--loop asyncio|trio] [--workload record|concurrent|stream]
                                      [--small N] [--large N]

Wall-clock time on a shared 2-core machine moves by 30% between runs; an instruction count
repeats within about 2% for the same code and input (how often the threads contend for a lock
still varies). Each mode runs twice under ``valgrind
--tool=callgrind`` (all threads counted): once with ``small`` units of work, once with ``large``;
the difference divided by ``large - small`` is the cost of one unit, without start-up and set-up.

Workloads (the rows of ``benchmarks/run.py`` of the same names):

- ``record`` (unit: one step). Floor: ``BEGIN IMMEDIATE; INSERT; COMMIT`` of one row per call on
  a plain ``sqlite3`` connection (WAL, synchronous=FULL), each call sent through
  ``anyio.to_thread.run_sync`` with a ``CapacityLimiter(1)``. Ours: ``await rt.step(name, fn, i)``
  in one session of a ``SqliteRuntime`` (after a warm-up session), on a fresh file.
- ``concurrent`` (unit: one round of 50 sessions, each opened, 20 steps recorded, closed, all at
  once). Floor: the least group commit can do in Python -- 50 tasks each pickle a value per step
  and hand it to a shared batch that one of them commits (``executemany`` + one ``COMMIT``
  through ``anyio.to_thread.run_sync``), the others waiting on an ``anyio.Event``; no session
  opens. Ours: the same 50 x 20 through ``rt.session`` and ``rt.step``.
- ``stream`` (unit: one stream step of 200 chunks of 50 B, in a session already open). Floor:
  collect the chunks, pickle the list, one raw insert+commit through ``anyio.to_thread``. Ours:
  ``async for chunk in rt.stream_step(...)`` with the default live journaling.

Needs valgrind. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import anyio

from jeevesagent.runtime import SqliteRuntime

SESSIONS, STEPS = 50, 20
CHUNKS = [bytes([65 + i % 26]) * 50 for i in range(200)]
DEFAULTS = {"record": (100, 300), "concurrent": (1, 3), "stream": (10, 30)}


def _noop(i: int) -> int:
    return i


async def _producer() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk


def _connect(path: str, table: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=full")
    conn.execute(table)
    return conn


async def _ours_record(folder: str, n: int) -> None:
    rt = SqliteRuntime(os.path.join(folder, "journal.db"))
    async with rt:
        async with rt.session("warm-up"):
            await rt.step("w", _noop, 0)
        async with rt.session("bench"):
            for i in range(n):
                await rt.step("step", _noop, i)


async def _floor_record(folder: str, n: int) -> None:
    conn = _connect(os.path.join(folder, "floor.db"), "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    limiter = anyio.CapacityLimiter(1)

    def insert(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"s/{i}", b"x" * 8))
        conn.execute("COMMIT")

    try:
        for i in range(n):
            await anyio.to_thread.run_sync(insert, i, limiter=limiter)
    finally:
        conn.close()


async def _ours_concurrent(folder: str, n: int) -> None:
    rt = SqliteRuntime(os.path.join(folder, "journal.db"))

    async def one(tag: str) -> None:
        async with rt.session(tag):
            for i in range(STEPS):
                await rt.step(f"s{i}", _noop, i)

    async with rt:
        async with rt.session("warm-up"):
            await rt.step("w", _noop, 0)
        for r in range(n):
            async with anyio.create_task_group() as tg:
                for j in range(SESSIONS):
                    tg.start_soon(one, f"c{r}-{j}")


async def _floor_concurrent(folder: str, n: int) -> None:
    conn = _connect(
        os.path.join(folder, "floor.db"),
        "CREATE TABLE t (s TEXT, k TEXT, v BLOB, PRIMARY KEY (s, k))",
    )
    limiter = anyio.CapacityLimiter(1)
    pending: list[tuple[tuple[str, str, bytes], anyio.Event]] = []
    writing = False

    def insert(rows: list[tuple[str, str, bytes]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def write(row: tuple[str, str, bytes]) -> None:
        nonlocal writing
        event = anyio.Event()
        pending.append((row, event))
        if writing:
            await event.wait()
            return
        writing = True
        while pending:
            batch = pending[:]
            pending.clear()
            await anyio.to_thread.run_sync(insert, [r for r, _ in batch], limiter=limiter)
            for _, done in batch:
                done.set()
        writing = False

    async def one(tag: str) -> None:
        for i in range(STEPS):
            await write((tag, f"s{i}", pickle.dumps(i)))

    try:
        for r in range(n):
            async with anyio.create_task_group() as tg:
                for j in range(SESSIONS):
                    tg.start_soon(one, f"c{r}-{j}")
    finally:
        conn.close()


async def _ours_stream(folder: str, n: int) -> None:
    rt = SqliteRuntime(os.path.join(folder, "journal.db"))
    async with rt, rt.session("bench"):
        await rt.step("w", _noop, 0)
        for i in range(n):
            async for _ in rt.stream_step(f"s{i}", _producer):
                pass


async def _floor_stream(folder: str, n: int) -> None:
    conn = _connect(os.path.join(folder, "floor.db"), "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    limiter = anyio.CapacityLimiter(1)

    def insert(i: int, data: bytes) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"s/{i}", data))
        conn.execute("COMMIT")

    try:
        await anyio.to_thread.run_sync(insert, -1, b"x", limiter=limiter)
        for i in range(n):
            data = pickle.dumps([c async for c in _producer()], protocol=pickle.HIGHEST_PROTOCOL)
            await anyio.to_thread.run_sync(insert, i, data, limiter=limiter)
    finally:
        conn.close()


RUNS: dict[tuple[str, str], Any] = {
    ("record", "ours"): _ours_record,
    ("record", "floor"): _floor_record,
    ("concurrent", "ours"): _ours_concurrent,
    ("concurrent", "floor"): _floor_concurrent,
    ("stream", "ours"): _ours_stream,
    ("stream", "floor"): _floor_stream,
}


def _child(workload: str, mode: str, n: int, loop: str) -> None:
    with tempfile.TemporaryDirectory(prefix="jeevesagent-instr-") as folder:
        anyio.run(RUNS[(workload, mode)], folder, n, backend=loop)


def _count(workload: str, mode: str, n: int, loop: str) -> int:
    return callgrind_count([__file__, "--child", workload, mode, str(n), loop])


def callgrind_count(args: list[str]) -> int:
    """Instructions that ``python *args`` executes, all threads, counted by callgrind."""
    with tempfile.TemporaryDirectory(prefix="jeevesagent-cg-") as out:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}/cg.out",
                sys.executable,
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(found.group(1))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2], int(argv[3]), argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--workload", choices=sorted(DEFAULTS), default="record")
    p.add_argument("--small", type=int)
    p.add_argument("--large", type=int)
    a = p.parse_args(argv)
    small_n = a.small if a.small is not None else DEFAULTS[a.workload][0]
    large_n = a.large if a.large is not None else DEFAULTS[a.workload][1]
    unit = {"record": "step", "concurrent": "round of 50 x 20", "stream": "stream"}[a.workload]
    per = {}
    for mode in ("floor", "ours"):
        small = _count(a.workload, mode, small_n, a.loop)
        large = _count(a.workload, mode, large_n, a.loop)
        per[mode] = (large - small) / (large_n - small_n)
        print(f"{a.workload}, {mode}: {per[mode] / 1000:,.1f}k instructions per {unit} ({a.loop})")
    print(
        f"{a.workload}, ours - floor: {(per['ours'] - per['floor']) / 1000:,.1f}k instructions "
        f"per {unit}; ratio {per['ours'] / per['floor']:.2f}x"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

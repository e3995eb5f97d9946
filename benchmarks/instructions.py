"""Instructions per recorded step on SQLite, ours against the floor, counted by callgrind.

    python benchmarks/instructions.py [--loop asyncio|trio] [--small 100] [--large 300]

Wall-clock time on a shared 2-core machine moves by 30% between runs; an instruction count
repeats exactly for the same code and input. Each mode runs twice under ``valgrind
--tool=callgrind`` (all threads counted): once recording ``small`` steps, once ``large``; the
difference divided by ``large - small`` is the cost of one step, without start-up and set-up.

- ``floor``: ``BEGIN IMMEDIATE; INSERT; COMMIT`` of one row per call on a plain ``sqlite3``
  connection (WAL, synchronous=FULL), each call sent through ``anyio.to_thread.run_sync`` with a
  ``CapacityLimiter(1)`` -- the record floor of ``benchmarks/run.py``.
- ``ours``: ``await rt.step(name, fn, i)`` in one session of a ``SqliteRuntime`` (after a warm-up
  session), on a fresh file.

Needs valgrind. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile

import anyio

from jeevesagent.runtime import SqliteRuntime


def _noop(i: int) -> int:
    return i


async def _ours(folder: str, n: int) -> None:
    rt = SqliteRuntime(os.path.join(folder, "journal.db"))
    async with rt:
        async with rt.session("warm-up"):
            await rt.step("w", _noop, 0)
        async with rt.session("bench"):
            for i in range(n):
                await rt.step("step", _noop, i)


async def _floor(folder: str, n: int) -> None:
    conn = sqlite3.connect(
        os.path.join(folder, "floor.db"), check_same_thread=False, isolation_level=None
    )
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=full")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
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


def _child(mode: str, n: int, loop: str) -> None:
    with tempfile.TemporaryDirectory(prefix="jeevesagent-instr-") as folder:
        anyio.run(_ours if mode == "ours" else _floor, folder, n, backend=loop)


def _count(mode: str, n: int, loop: str) -> int:
    with tempfile.TemporaryDirectory(prefix="jeevesagent-cg-") as out:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}/cg.out",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(n),
                loop,
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
        _child(argv[1], int(argv[2]), argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=300)
    a = p.parse_args(argv)
    per_step = {}
    for mode in ("floor", "ours"):
        small, large = _count(mode, a.small, a.loop), _count(mode, a.large, a.loop)
        per_step[mode] = (large - small) / (a.large - a.small)
        print(f"{mode}: {per_step[mode] / 1000:,.1f}k instructions per step ({a.loop})")
    print(
        f"ours - floor: {(per_step['ours'] - per_step['floor']) / 1000:,.1f}k instructions per "
        f"step; ratio {per_step['ours'] / per_step['floor']:.2f}x"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

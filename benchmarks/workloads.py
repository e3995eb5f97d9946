"""The five workloads of DESIGN.md §5. Each ``*_round`` measures the floor, then the workload,
and returns every metric of the round; ``run.py`` runs the rounds and builds the table.

Each function also checks that the runtime did what was measured (``fn`` ran on record and did
not run on replay), so a broken replay cannot pass as a fast one. Nothing checks timing.
"""

from __future__ import annotations

import contextlib
import cProfile
import itertools
import pickle
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from harness import now_ns, run_rounds, settle
from stores import BenchStore, floor_rows

from jeevesagent.runtime import JournaledRuntime

__all__ = [
    "Config",
    "collect_stream",
    "concurrent_round",
    "record_round",
    "replay_rounds",
    "scale_rounds",
    "stream_round",
]

CHUNKS = [f"chunk {i:04d} ".encode().ljust(50, b".") for i in range(200)]


@dataclass(frozen=True)
class Config:
    steps: int = 500
    sessions: int = 50
    steps_per_session: int = 20
    scale_rows: int = 10_000_000


class Calls:
    """How many times the step function and the stream producer actually ran."""

    step = 0
    stream = 0


async def step_fn(arg: dict[str, Any]) -> dict[str, Any]:
    Calls.step += 1
    return {"i": arg["i"], "text": arg["text"], "ok": True}


async def producer() -> AsyncIterator[bytes]:
    Calls.stream += 1
    for chunk in CHUNKS:
        yield chunk


def _expect(what: str, got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"{what}: expected {want}, got {got}")


@contextlib.contextmanager
def _profiling(profiler: cProfile.Profile | None) -> Iterator[None]:
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


@contextlib.asynccontextmanager
async def _runtime(store: BenchStore, journal: str) -> AsyncIterator[JournaledRuntime]:
    rt = await store.open_runtime(journal)
    try:
        yield rt
    finally:
        await rt.aclose()


async def record_steps(
    rt: JournaledRuntime, session_id: str, n: int, profiler: cProfile.Profile | None = None
) -> float:
    """µs per step of ``n`` sequential new steps in one session (session open not timed).
    ``profiler``, if given, is enabled for the timed loop only."""
    before = Calls.step
    async with rt.session(session_id):
        settle()
        with _profiling(profiler):
            start = now_ns()
            for i in range(n):
                await rt.step(f"s{i}", step_fn, {"i": i, "text": "hello"})
            elapsed = now_ns() - start
    _expect("record: step function calls", Calls.step - before, n)
    return elapsed / n / 1000


async def replay_steps(
    rt: JournaledRuntime, session_id: str, n: int, profiler: cProfile.Profile | None = None
) -> tuple[float, float, float]:
    """(ms to open the session, µs per replayed step, µs per step of the whole call: opening,
    the steps and closing the session)."""
    before = Calls.step
    settle()
    start = now_ns()
    async with rt.session(session_id):
        with _profiling(profiler):
            opened = now_ns()
            for i in range(n):
                await rt.step(f"s{i}", step_fn, {"i": i, "text": "hello"})
            elapsed = now_ns() - opened
    whole = now_ns() - start
    _expect("replay: step function calls", Calls.step - before, 0)
    return (opened - start) / 1e6, elapsed / n / 1000, whole / n / 1000


async def direct_calls(n: int) -> float:
    """µs per call of the step function itself, in the same loop shape as a step."""
    settle()
    start = now_ns()
    for i in range(n):
        await step_fn({"i": i, "text": "hello"})
    return (now_ns() - start) / n / 1000


# -- 1. record -----------------------------------------------------------------------------------
async def record_round(store: BenchStore, cfg: Config) -> dict[str, float]:
    async with store.journal() as journal:
        settle()
        floor = await store.floor_insert(journal, floor_rows("floor", cfg.steps))
    got = {"floor": floor}
    fenced = getattr(store, "floor_fenced", None)  # Postgres: the store's own statement, raw
    if fenced is not None:
        async with store.journal() as journal:
            settle()
            got["fenced"] = await fenced(journal, floor_rows("fenced", cfg.steps))
    async with store.journal() as journal, _runtime(store, journal) as rt:
        got["record"] = await record_steps(rt, "bench", cfg.steps)
    return got


# -- 2. replay -----------------------------------------------------------------------------------
async def replay_rounds(
    store: BenchStore, cfg: Config, rounds: int, warmup: int
) -> dict[str, list[float]]:
    async with store.journal() as journal:
        async with _runtime(store, journal) as rt:
            await record_steps(rt, "bench", cfg.steps)

        async def one_round() -> dict[str, float]:
            settle()
            read = await store.floor_read(journal, "bench")
            direct = await direct_calls(cfg.steps)
            async with _runtime(store, journal) as rt:  # a NEW runtime on the same journal
                open_ms, replay, whole = await replay_steps(rt, "bench", cfg.steps)
            return {
                "direct": direct,
                "read": read,
                "replay": replay,
                "open": open_ms,
                "whole": whole,
            }

        return await run_rounds(rounds, warmup, one_round)


# -- 3. concurrent -------------------------------------------------------------------------------
async def concurrent_round(store: BenchStore, cfg: Config) -> dict[str, float]:
    async with store.journal() as journal:
        settle()
        floor_us = await store.floor_insert(journal, floor_rows("floor", cfg.steps))
    async with store.journal() as journal:
        settle()
        least = await store.floor_group_commit(journal, cfg.sessions, cfg.steps_per_session)
    total = cfg.sessions * cfg.steps_per_session
    before = Calls.step

    async def one_session(rt: JournaledRuntime, j: int) -> None:
        async with rt.session(f"c{j}"):
            for i in range(cfg.steps_per_session):
                await rt.step(f"s{i}", step_fn, {"i": i, "text": "hello"})

    async with store.journal() as journal, _runtime(store, journal) as rt:
        settle()
        start = now_ns()  # session opens (one bulk load each) are part of the work
        async with anyio.create_task_group() as tg:
            for j in range(cfg.sessions):
                tg.start_soon(one_session, rt, j)
        elapsed = now_ns() - start
    _expect("concurrent: step function calls", Calls.step - before, total)
    return {"floor": 1e6 / floor_us, "least": least, "concurrent": total / (elapsed / 1e9)}


# -- 4. stream -----------------------------------------------------------------------------------
async def _consume(stream: AsyncIterator[bytes], *, settled: bool = False) -> float:
    """µs per chunk of draining ``stream`` (which must yield exactly the 200 chunks); garbage is
    collected first unless the caller did (``settled``)."""
    if not settled:
        settle()
    count = 0
    start = now_ns()
    async for _ in stream:
        count += 1
    elapsed = now_ns() - start
    _expect("stream: chunks", count, len(CHUNKS))
    return elapsed / count / 1000


async def _two_chunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS[:2]:
        yield chunk


async def first_step(rt: JournaledRuntime, session_id: str = "first") -> float:
    """ms of the first step a new runtime records (in a session of its own). A short stream
    follows it in the same session: a store prepares each of its statements once per
    connection (Postgres: a stream's write is a statement of its own), so the timed stream
    after this pays none of that, as the floor's timed insert follows its warm one."""
    async with rt.session(session_id):
        start = now_ns()
        await rt.step("first", step_fn, {"i": -1, "text": "hello"})
        elapsed = (now_ns() - start) / 1e6
        async for _ in rt.stream_step("first stream", _two_chunks):
            pass
        return elapsed


async def collect_stream() -> bytes:
    """The stream floor's work before its insert: the chunks collected and pickled as one value
    (the runtime pickles the chunk list the same way)."""
    return pickle.dumps([chunk async for chunk in producer()], protocol=pickle.HIGHEST_PROTOCOL)


async def _whole_call(rt: JournaledRuntime, session_id: str, *, settled: bool = False) -> float:
    """µs per chunk of the whole call: open the session, drain its stream step, close it;
    garbage is collected first unless the caller did (``settled``)."""
    if not settled:
        settle()
    count = 0
    start = now_ns()
    async with rt.session(session_id):
        async for _ in rt.stream_step("s", producer):
            count += 1
    elapsed = now_ns() - start
    _expect("stream: chunks", count, len(CHUNKS))
    return elapsed / count / 1000


async def stream_round(store: BenchStore) -> dict[str, float]:
    """Inside the session (opened and closed outside the timing) and whole calls (open, stream,
    close), each next to its floors: a plain async generator, and the DESIGN's stream floor --
    collect the chunks, one raw insert+commit of them (``BenchStore.floor_stream``)."""
    plain = await _consume(producer())
    # Both sides run the same sequence before their timed commit: garbage collected, then a
    # durable write of the same statement (the floor's warm insert; our first step and a short
    # stream, in a session of its own), then
    # the timed section (ours opens its session in between, untimed). The order matters on
    # this machine: a commit right after a pause (the ~13 ms of gc.collect, or a 5 ms sleep)
    # costs ~1.8x one right after another commit, on a raw connection too -- see
    # benchmarks/fsync_gap.py -- so a timed section must not follow the collection directly.
    async with store.journal() as journal:
        settle()
        floor = await store.floor_stream(journal, collect_stream) / len(CHUNKS)
    async with store.journal() as journal:
        before = Calls.stream
        async with _runtime(store, journal) as rt:
            # The first write of a new runtime also pays one-time costs (a new connection's
            # first statement); take it out of the stream's time and report it on its own.
            settle()
            first = await first_step(rt)
            async with rt.session("stream"):
                # with its one commit, the first write after the session's claim
                record = await _consume(rt.stream_step("s", producer), settled=True)
            settle()
            await first_step(rt, "warm")  # a durable write before it, as for the floor
            whole_record = await _whole_call(rt, "whole", settled=True)
        async with _runtime(store, journal) as rt:
            await first_step(rt)  # the same one-time costs, out of the replays' time
            async with rt.session("stream"):
                replay = await _consume(rt.stream_step("s", producer))
            whole_replay = await _whole_call(rt, "whole")
        _expect("stream: producer runs (record x2, no replay)", Calls.stream - before, 2)
    return {
        "plain": plain,
        "floor": floor,
        "record": record,
        "replay": replay,
        "whole record": whole_record,
        "whole replay": whole_replay,
        "first": first,
    }


# -- 5. scale ------------------------------------------------------------------------------------
async def scale_rounds(
    store: BenchStore, cfg: Config, rounds: int, warmup: int
) -> tuple[float, dict[str, list[float]]]:
    """(seconds to populate, samples): record on an empty journal vs one with ``scale_rows``."""
    sessions = itertools.count(1)
    async with store.journal() as full:
        populate_s = await store.populate(full, cfg.scale_rows)

        async def one_round() -> dict[str, float]:
            async with store.journal() as empty, _runtime(store, empty) as rt:
                floor = await record_steps(rt, "bench", cfg.steps)
            async with _runtime(store, full) as rt:
                loaded = await record_steps(rt, f"bench-{next(sessions)}", cfg.steps)
            return {"empty": floor, "full": loaded}

        return populate_s, await run_rounds(rounds, warmup, one_round)

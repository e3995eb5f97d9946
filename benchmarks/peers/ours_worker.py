"""Our worker: the workloads through jeevesagent's published API, and the floors.

Runs in our own environment (the nox session's virtualenv). The runtime is used only through
its published names: ``SqliteRuntime`` / ``PostgresRuntime`` (made by benchmarks/stores.py),
``rt.session``, ``rt.step`` and ``rt.stream_step``. A new runtime first records one step in a
session of its own, untimed, so a timed call does not include opening its first connection
(DBOS's ``launch()`` and a checkpointer's ``setup()`` connect before their timed calls too).

Two replays of a finished run, in a new runtime on the recorded journal:

- "replay, body re-run" (``replay``): the same session again: the session opens (claim and bulk
  load), the body runs again and every ``rt.step`` returns its recorded result without calling
  the function (the call count is checked), then the session closes. The peers have no such
  mode for a finished run.
- "result lookup" (``lookup``): a registered ``@workflow`` of the same steps, run again with
  ``rt.run(wf, id, n)`` after it completed: the arguments are checked against the recorded ones
  and the recorded result is returned; the body does not run (checked). This is what DBOS and
  LangGraph do when a finished run is invoked again (their workers' ``lookup``).

The floors are benchmarks/stores.py's raw-driver ones: one ``INSERT`` + commit per row (record;
concurrent is 1e6 / that), one point ``SELECT`` per row (replay), and for a stream, collecting
the chunks plus one insert of their pickled list (record) or one point read of it (replay).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pathlib
import pickle
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # benchmarks/

from common import (
    CHUNKS,
    Calls,
    elapsed_us,
    expect,
    now_ns,
    producer,
    serve,
    settle,
    step_body,
)
from stores import BenchStore, PostgresBench, SqliteBench

from jeevesagent.runtime import JournaledRuntime, current_runtime, workflow


async def small_step(arg: dict[str, Any]) -> dict[str, Any]:
    return step_body(arg)


def bench_store(req: dict[str, Any]) -> BenchStore:
    if req["store"] == "sqlite":
        return SqliteBench(pathlib.Path(req["base"]))
    return PostgresBench(req["base"], "asyncio")


@contextlib.asynccontextmanager
async def runtime(store: BenchStore, journal: str) -> AsyncIterator[JournaledRuntime]:
    rt = await store.open_runtime(journal)
    try:
        async with rt.session("warm"):  # untimed: the runtime's first connection
            await rt.step("warm", small_step, {"i": -1, "text": "hello"})
        yield rt
    finally:
        await rt.aclose()


class Bodies:
    """How many times the workflow body of ``lookup`` ran in this process."""

    runs = 0


@workflow(name="bench.steps")
async def steps_workflow(n: int) -> dict[str, Any]:
    """The same steps as ``run_steps``, as a registered workflow (for ``rt.run``)."""
    Bodies.runs += 1
    rt = current_runtime()
    last: dict[str, Any] = {}
    for i in range(n):
        last = await rt.step(f"s{i}", small_step, {"i": i, "text": "hello"})
    return last


async def run_steps(rt: JournaledRuntime, session_id: str, n: int) -> None:
    async with rt.session(session_id):
        for i in range(n):
            await rt.step(f"s{i}", small_step, {"i": i, "text": "hello"})


async def record(req: dict[str, Any]) -> dict[str, Any]:
    store, n = bench_store(req), req["steps"]
    async with store.journal() as journal, runtime(store, journal) as rt:
        before = Calls.step
        settle()
        start = now_ns()
        await run_steps(rt, "bench", n)
        per_step = elapsed_us(start, n)
        expect("record: steps run", Calls.step - before, n)
    return {"record": per_step}


async def replay(req: dict[str, Any]) -> dict[str, Any]:
    store, n = bench_store(req), req["steps"]
    async with store.journal() as journal:
        async with runtime(store, journal) as rt:
            await run_steps(rt, "bench", n)
        async with runtime(store, journal) as rt:  # a new runtime on the recorded journal
            before = Calls.step
            settle()
            start = now_ns()
            await run_steps(rt, "bench", n)
            per_step = elapsed_us(start, n)
            expect("replay: steps run", Calls.step - before, 0)
    return {"replay": per_step}


async def lookup(req: dict[str, Any]) -> dict[str, Any]:
    store, n = bench_store(req), req["steps"]
    async with store.journal() as journal:
        async with runtime(store, journal) as rt:
            expect("lookup: first run", (await rt.run(steps_workflow, "bench", n))["i"], n - 1)
        async with runtime(store, journal) as rt:  # a new runtime on the recorded journal
            before, bodies = Calls.step, Bodies.runs
            settle()
            start = now_ns()
            result = await rt.run(steps_workflow, "bench", n)
            per_call = elapsed_us(start, 1)
            expect("lookup: result", result["i"], n - 1)
            expect("lookup: steps run", Calls.step - before, 0)
            expect("lookup: bodies run", Bodies.runs - bodies, 0)
    return {"lookup": per_call}


async def concurrent(req: dict[str, Any]) -> dict[str, Any]:
    store, sessions, per = bench_store(req), req["sessions"], req["per_session"]
    async with store.journal() as journal, runtime(store, journal) as rt:
        before = Calls.step
        settle()
        start = now_ns()
        async with anyio.create_task_group() as tg:
            for j in range(sessions):
                tg.start_soon(run_steps, rt, f"c{j}", per)
        elapsed = now_ns() - start
        expect("concurrent: steps run", Calls.step - before, sessions * per)
    return {"concurrent": sessions * per / (elapsed / 1e9)}


async def consume(rt: JournaledRuntime) -> int:
    async with rt.session("stream"):
        return len([chunk async for chunk in rt.stream_step("out", producer)])


async def stream(req: dict[str, Any]) -> dict[str, Any]:
    store = bench_store(req)
    async with store.journal() as journal:
        before = Calls.stream
        async with runtime(store, journal) as rt:
            settle()
            start = now_ns()
            expect("stream record: chunks", await consume(rt), len(CHUNKS))
            record_us = elapsed_us(start, len(CHUNKS))
        async with runtime(store, journal) as rt:
            settle()
            start = now_ns()
            expect("stream replay: chunks", await consume(rt), len(CHUNKS))
            replay_us = elapsed_us(start, len(CHUNKS))
        expect("stream: producer runs", Calls.stream - before, 1)
    return {"record": record_us, "replay": replay_us}


async def floors(req: dict[str, Any]) -> dict[str, Any]:
    """Every floor of one round, on one fresh journal of the store."""
    from stores import floor_rows

    store, n = bench_store(req), req["steps"]
    async with store.journal() as journal:
        settle()
        insert = await store.floor_insert(journal, floor_rows("floor", n))
        read = await store.floor_read(journal, "floor")
        # A stream: collect the chunks, then one insert of their list (a second write to the
        # journal, so its files exist); replay: one point read of the list, then iterate it.
        settle()
        start = now_ns()
        chunks = [chunk async for chunk in producer()]
        collect_ns = now_ns() - start
        row = ("stream", 0, "s:out:0", pickle.dumps(chunks, pickle.HIGHEST_PROTOCOL), time.time())
        stream_insert = await store.floor_insert(journal, [row])
        stream_read = await store.floor_read(journal, "stream")
        start = now_ns()
        expect("stream floor: chunks", sum(1 for _ in chunks), len(CHUNKS))
        iterate_ns = now_ns() - start
    per_chunk = len(CHUNKS)
    return {
        "insert": insert,
        "read": read,
        "stream_record": (collect_ns / 1000 + stream_insert) / per_chunk,
        "stream_replay": (stream_read + iterate_ns / 1000) / per_chunk,
    }


async def describe(req: dict[str, Any]) -> dict[str, Any]:
    info = {"jeevesagent": importlib.metadata.version("jeevesagent")}
    if "store" in req:
        info |= await bench_store(req).describe()
    return info


if __name__ == "__main__":
    serve(
        {
            "record": record,
            "replay": replay,
            "lookup": lookup,
            "concurrent": concurrent,
            "stream": stream,
            "floors": floors,
            "describe": describe,
        }
    )

"""LangGraph's worker: the workloads as a ``StateGraph`` with a checkpointer, run in the
LangGraph virtualenv.

Used the way LangGraph's documentation shows: a ``StateGraph`` compiled with
``AsyncSqliteSaver.from_conn_string(path)`` or an ``AsyncPostgresSaver`` on a psycopg
``AsyncConnectionPool`` (``autocommit=True, prepare_threshold=0, row_factory=dict_row``,
``await saver.setup()``), one ``thread_id`` per session, ``ainvoke``/``astream``. A step is one
super-step: the node ``step`` runs once and loops back to itself until ``i == n``, and every
super-step writes a checkpoint. ``durability="sync"`` is passed to each call, so each checkpoint
is persisted before the next step starts (the default, ``"async"``, persists it while the next
step runs; ``"exit"`` only at the end): the durability closest to a recorded step.

"Result lookup" (``lookup``, the replay of a finished run) is ``ainvoke(None, config)`` on the
finished thread, with a new checkpointer: it loads the thread's latest checkpoint, finds no task
left to run and returns that state without running any node (the node count is checked); it is
timed per call. LangGraph's other replay, invoking from an earlier ``checkpoint_id``,
re-executes the nodes after it rather than reusing their results: there is no "body re-run" row
for LangGraph.
The stream node collects the producer's chunks, sends each to the caller through
``get_stream_writer()`` (``stream_mode="custom"``) and returns them as its update, so they are
checkpointed once at the end; LangGraph journals no chunk as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from common import (
    CHUNKS,
    Calls,
    elapsed_us,
    expect,
    fresh_name,
    now_ns,
    producer,
    remove_sqlite,
    serve,
    settle,
    step_body,
    with_database,
)
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph


class StepsState(TypedDict):
    i: int
    n: int
    last: dict[str, Any] | None


class StreamState(TypedDict):
    chunks: list[bytes]


async def step(state: StepsState) -> dict[str, Any]:
    i = state["i"]
    return {"i": i + 1, "last": step_body({"i": i, "text": "hello"})}


def next_node(state: StepsState) -> str:
    return "step" if state["i"] < state["n"] else END


async def stream_node(state: StreamState) -> dict[str, Any]:
    write = get_stream_writer()
    chunks = []
    async for chunk in producer():
        write(chunk)
        chunks.append(chunk)
    return {"chunks": chunks}


def steps_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    g = StateGraph(StepsState)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_conditional_edges("step", next_node)
    return g.compile(checkpointer=saver)


def stream_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    g = StateGraph(StreamState)
    g.add_node("produce", stream_node)
    g.add_edge(START, "produce")
    g.add_edge("produce", END)
    return g.compile(checkpointer=saver)


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": 100_000}


@contextlib.asynccontextmanager
async def database(req: dict[str, Any]) -> AsyncIterator[str]:
    """A fresh SQLite path or Postgres DSN, removed at the end."""
    name = fresh_name("lg")
    if req["store"] == "sqlite":
        path = pathlib.Path(req["base"]) / f"{name}.sqlite3"
        try:
            yield str(path)
        finally:
            remove_sqlite(str(path))
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(req["base"], autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {name}")
    try:
        yield with_database(req["base"], name)
    finally:
        async with await psycopg.AsyncConnection.connect(req["base"], autocommit=True) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.asynccontextmanager
async def checkpointer(req: dict[str, Any], where: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    if req["store"] == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(where) as saver:
            await saver.setup()
            yield saver
        return
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(where, max_size=8, kwargs=kwargs, open=False) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver


async def run_steps(graph: Any, thread: str, n: int) -> None:
    state = await graph.ainvoke({"i": 0, "n": n, "last": None}, config(thread), durability="sync")
    expect("graph result", state["i"], n)


async def record(req: dict[str, Any]) -> dict[str, Any]:
    n = req["steps"]
    async with database(req) as where:
        async with checkpointer(req, where) as saver:
            graph = steps_graph(saver)
            before = Calls.step
            settle()
            start = now_ns()
            await run_steps(graph, "bench", n)
            per_step = elapsed_us(start, n)
            expect("record: steps run", Calls.step - before, n)
        info = {}
        if req["store"] == "sqlite":
            conn = sqlite3.connect(where)
            try:
                info["journal_mode"] = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
            finally:
                conn.close()
    return {"record": per_step, **info}


async def lookup(req: dict[str, Any]) -> dict[str, Any]:
    n = req["steps"]
    async with database(req) as where:
        async with checkpointer(req, where) as saver:
            await run_steps(steps_graph(saver), "bench", n)
        async with checkpointer(req, where) as saver:  # a new checkpointer on the same database
            graph = steps_graph(saver)
            before = Calls.step
            settle()
            start = now_ns()
            state = await graph.ainvoke(None, config("bench"), durability="sync")
            per_call = elapsed_us(start, 1)
            expect("lookup: state", state["i"], n)
            expect("lookup: steps run", Calls.step - before, 0)
    return {"lookup": per_call}


async def concurrent(req: dict[str, Any]) -> dict[str, Any]:
    sessions, per = req["sessions"], req["per_session"]
    async with database(req) as where, checkpointer(req, where) as saver:
        graph = steps_graph(saver)
        before = Calls.step
        settle()
        start = now_ns()
        await asyncio.gather(*(run_steps(graph, f"c{j}", per) for j in range(sessions)))
        elapsed = now_ns() - start
        expect("concurrent: steps run", Calls.step - before, sessions * per)
    return {"concurrent": sessions * per / (elapsed / 1e9)}


async def stream(req: dict[str, Any]) -> dict[str, Any]:
    async with database(req) as where:
        before = Calls.stream
        async with checkpointer(req, where) as saver:
            graph = stream_graph(saver)
            settle()
            start = now_ns()
            got = [
                chunk
                async for chunk in graph.astream(
                    {"chunks": []}, config("stream"), stream_mode="custom", durability="sync"
                )
            ]
            record_us = elapsed_us(start, len(CHUNKS))
            expect("stream record: chunks", len(got), len(CHUNKS))
        async with checkpointer(req, where) as saver:
            graph = stream_graph(saver)
            settle()
            start = now_ns()
            state = await graph.ainvoke(None, config("stream"), durability="sync")
            got = list(state["chunks"])
            replay_us = elapsed_us(start, len(CHUNKS))
            expect("stream replay: chunks", len(got), len(CHUNKS))
        expect("stream: producer runs", Calls.stream - before, 1)
    return {"record": record_us, "replay": replay_us}


async def describe(req: dict[str, Any]) -> dict[str, Any]:
    names = ["langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres", "psycopg"]
    return {name: importlib.metadata.version(name) for name in names}


if __name__ == "__main__":
    serve(
        {
            "record": record,
            "lookup": lookup,
            "concurrent": concurrent,
            "stream": stream,
            "describe": describe,
        }
    )

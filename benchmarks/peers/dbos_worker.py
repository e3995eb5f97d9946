"""DBOS Transact's worker: the workloads as DBOS workflows, run in the DBOS virtualenv.

Used the way DBOS's documentation shows: ``DBOS(config=...)`` then ``DBOS.launch()`` inside the
async program, ``@DBOS.workflow()`` and ``@DBOS.step()`` on async functions, and
``SetWorkflowID`` to name a workflow. Each request gets a fresh system database (a SQLite file,
or a Postgres database DBOS creates on launch) and a fresh DBOS instance, destroyed at the end;
only the workflow calls are timed.

"Result lookup" (``lookup``, the replay of a finished run) is what DBOS does when a completed
workflow's id is invoked again: it finds the workflow's row with status SUCCESS and returns the
recorded output without running the body or any step (the step count is checked); it is timed
per call. Re-executing a body with its recorded step outputs happens only when DBOS recovers a
PENDING workflow (after a crash), which is not measured: there is no "body re-run" row for DBOS.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

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
from dbos import DBOS, DBOSConfig, SetWorkflowID


@DBOS.step()
async def small_step(arg: dict[str, Any]) -> dict[str, Any]:
    return step_body(arg)


@DBOS.workflow()
async def steps_workflow(n: int) -> int:
    for i in range(n):
        await small_step({"i": i, "text": "hello"})
    return n


@DBOS.workflow()
async def stream_workflow() -> int:
    # DBOS's durable streams: each write is one row in the system database, readable at once
    # by DBOS.read_stream from any process.
    count = 0
    async for chunk in producer():
        await DBOS.write_stream_async("out", chunk)
        count += 1
    await DBOS.close_stream_async("out")
    return count


@contextlib.asynccontextmanager
async def launched(req: dict[str, Any], db: str) -> AsyncIterator[None]:
    """A launched DBOS instance on the system database ``db``."""
    if req["store"] == "sqlite":
        url = f"sqlite:///{pathlib.Path(req['base']) / db}.sqlite3"
    else:
        url = with_database(req["base"], db)
    config: DBOSConfig = {"name": "peers-bench", "system_database_url": url, "log_level": "ERROR"}
    DBOS(config=config)
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


@contextlib.asynccontextmanager
async def system_db(req: dict[str, Any]) -> AsyncIterator[str]:
    """A fresh system database name, removed at the end."""
    db = fresh_name("dbos")
    try:
        yield db
    finally:
        if req["store"] == "sqlite":
            remove_sqlite(f"{req['base']}/{db}.sqlite3")
        else:
            import psycopg

            with psycopg.connect(req["base"], autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


async def run_steps(workflow_id: str, n: int) -> None:
    with SetWorkflowID(workflow_id):
        result = await steps_workflow(n)
    expect("workflow result", result, n)


async def record(req: dict[str, Any]) -> dict[str, Any]:
    n = req["steps"]
    async with system_db(req) as db, launched(req, db):
        before = Calls.step
        settle()
        start = now_ns()
        await run_steps("bench", n)
        per_step = elapsed_us(start, n)
        expect("record: steps run", Calls.step - before, n)
    info = {}
    if req["store"] == "sqlite":
        info["journal_mode"] = _journal_mode(pathlib.Path(req["base"]) / f"{db}.sqlite3")
    return {"record": per_step, **info}


def _journal_mode(path: pathlib.Path) -> str:
    conn = sqlite3.connect(path)  # reading the mode of an existing file does not change it
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


async def lookup(req: dict[str, Any]) -> dict[str, Any]:
    n = req["steps"]
    async with system_db(req) as db:
        async with launched(req, db):
            await run_steps("bench", n)
        async with launched(req, db):  # a new DBOS instance on the recorded database
            before = Calls.step
            settle()
            start = now_ns()
            await run_steps("bench", n)
            per_call = elapsed_us(start, 1)
            expect("lookup: steps run", Calls.step - before, 0)
    return {"lookup": per_call}


async def concurrent(req: dict[str, Any]) -> dict[str, Any]:
    sessions, per = req["sessions"], req["per_session"]
    async with system_db(req) as db, launched(req, db):
        before = Calls.step
        settle()
        start = now_ns()
        await asyncio.gather(*(run_steps(f"c{j}", per) for j in range(sessions)))
        elapsed = now_ns() - start
        expect("concurrent: steps run", Calls.step - before, sessions * per)
    return {"concurrent": sessions * per / (elapsed / 1e9)}


async def stream(req: dict[str, Any]) -> dict[str, Any]:
    async with system_db(req) as db:
        async with launched(req, db):
            before = Calls.stream
            settle()
            start = now_ns()
            with SetWorkflowID("stream"):
                count = await stream_workflow()
            record_us = elapsed_us(start, len(CHUNKS))
            expect("stream record: chunks", count, len(CHUNKS))
        async with launched(req, db):  # read the recorded stream back from a new instance
            settle()
            start = now_ns()
            got = [chunk async for chunk in DBOS.read_stream_async("stream", "out")]
            replay_us = elapsed_us(start, len(CHUNKS))
            expect("stream replay: chunks", len(got), len(CHUNKS))
            expect("stream: producer runs", Calls.stream - before, 1)
    return {"record": record_us, "replay": replay_us}


async def describe(req: dict[str, Any]) -> dict[str, Any]:
    return {"dbos": importlib.metadata.version("dbos")}


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

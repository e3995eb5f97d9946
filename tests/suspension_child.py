"""The worker processes of test_suspension_processes.py, and the workflows they serve.

Run as ``python -c "from tests.suspension_child import main; main()" CONFIG`` (CONFIG: a JSON
object: ``kind``, ``target``, ``loop``, ``log``, ``suspend_after``) with the checkout on
``PYTHONPATH``: a worker, ``rt.serve(approval, nap, suspend_after=...)``, until it is killed.
Every step function appends ``ran PID SESSION STEP TIME`` to the log (one ``os.write`` to a file
opened with ``O_APPEND``, so the lines of many processes never mix).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from typing import Any

import anyio

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SqliteJournalStore,
    current_runtime,
    workflow,
)

LOG = ""


def effect(session: str, step: str, value: Any) -> Any:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"ran {os.getpid()} {session} {step} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    return value


@workflow(name="suspproc.approval")
async def approval(amount: int) -> str:
    rt = current_runtime()
    sid = rt.current_session_id()
    quote = await rt.step("quote", effect, sid, "quote", amount * 2)
    answer = await rt.wait_for_signal(str(sid), "approve")
    return str(await rt.step("book", effect, sid, "book", f"{answer}:{quote}"))


@workflow(name="suspproc.nap")
async def nap(seconds: float) -> float:
    rt = current_runtime()
    sid = rt.current_session_id()
    await rt.step("before", effect, sid, "before", 1)
    await rt.sleep("nap", seconds)
    return float(await rt.step("after", effect, sid, "after", time.time()))


async def serve(config: dict[str, Any]) -> None:
    store: SqliteJournalStore | PostgresJournalStore
    if config["kind"] == "sqlite":
        store = SqliteJournalStore(config["target"])
    else:
        store = await PostgresJournalStore.connect(config["target"], min_size=1, max_size=4)
        await store.init_schema()
    async with (
        store,
        JournaledRuntime(store, poll_interval=0.05) as rt,
        anyio.create_task_group() as tg,
    ):
        await tg.start(partial(rt.serve, approval, nap, suspend_after=config["suspend_after"]))
        print(f"serving {os.getpid()}", flush=True)


def main() -> None:
    global LOG
    config = json.loads(sys.argv[1])
    LOG = config["log"]
    anyio.run(serve, config, backend=config["loop"])

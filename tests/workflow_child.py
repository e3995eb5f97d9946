"""The child processes of test_workflow_processes.py, and the workflows they run.

Run as ``python -c "from tests.workflow_child import main; main()" CONFIG`` (CONFIG: a JSON
object) with the checkout on ``PYTHONPATH``; ``mode`` is

- ``serve``: a worker, ``rt.serve(job, stuck, fails, ctrl_c, concurrency=N)`` until the process
  is killed, interrupted (SIGINT: KeyboardInterrupt) or asked to stop (SIGTERM, turned into a
  cancellation of the worker's task group, as an application does it);
- ``result``: prints the outcome of each session in ``sessions`` as one JSON line, read with
  ``rt.result`` (the value, or the exception's type and message).

Every step function writes to the side-effect log (``log``: one ``os.write`` of one line to a
file opened with ``O_APPEND``, so the lines of many processes never mix, and the log outlives
any of them): ``ran PID SESSION STEP TIME`` when it starts, ``stopped PID SESSION STEP TIME``
when it is cancelled part way.
"""

from __future__ import annotations

import json
import os
import signal
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


class QuotaError(Exception):
    """A failure of the application's own type (rebuilt by a process that can import it)."""


def note(line: str) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


async def effect(session: str, step: str, value: int, delay: float, gate: str = "") -> int:
    note(f"ran {os.getpid()} {session} {step}")
    try:
        await anyio.sleep(delay)
        # A file written by another process: polled (a stat of a local file does not block).
        while gate and not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
            await anyio.sleep(0.01)
    except anyio.get_cancelled_exc_class():
        note(f"stopped {os.getpid()} {session} {step}")
        raise
    return value


@workflow(name="proc.job")
async def job(steps: int, delay: float, gate: str = "", hold: int = 0) -> str:
    """``steps`` steps ``s0``, ``s1``... each taking ``delay`` seconds; with a ``gate`` (a file
    path), step ``hold`` and the steps after it wait until the file exists."""
    rt = current_runtime()
    sid = rt.current_session_id()
    total = 0
    for i in range(steps):
        wait = gate if gate and i >= hold else ""
        total += await rt.step(f"s{i}", effect, sid, f"s{i}", i, delay, wait)
    return f"{sid}:{total}"


@workflow(name="proc.stuck")
async def stuck() -> str:
    """A quick step, then one that takes ten minutes (until it is cancelled)."""
    rt = current_runtime()
    sid = rt.current_session_id()
    await rt.step("quick", effect, sid, "quick", 1, 0.0)
    await rt.step("long", effect, sid, "long", 2, 600.0)
    return "never"


async def press_ctrl_c(session: str, marker: str) -> str:
    """Interrupt this process as Ctrl-C does (SIGINT to itself), once: the marker file says it
    was done, so the session's next run goes on."""
    note(f"ran {os.getpid()} {session} press")
    if os.path.exists(marker):  # noqa: ASYNC240 -- a stat of a local file
        return "pressed before"
    open(marker, "w").close()  # noqa: ASYNC230 -- an empty local file, at once
    os.kill(os.getpid(), signal.SIGINT)
    try:
        await anyio.sleep(30)  # asyncio: the main task is cancelled; trio: KeyboardInterrupt
    except BaseException:
        note(f"stopped {os.getpid()} {session} press")
        raise
    return "not interrupted"


@workflow(name="proc.ctrl_c")
async def ctrl_c(marker: str) -> str:
    """Steps ``before``, ``press`` (SIGINT to its own process, the first time) and ``after``."""
    rt = current_runtime()
    sid = rt.current_session_id()
    await rt.step("before", effect, sid, "before", 1, 0.0)
    pressed = await rt.step("press", press_ctrl_c, sid, marker)
    await rt.step("after", effect, sid, "after", 2, 0.0)
    return pressed


@workflow(name="proc.fails")
async def fails(kind: str, message: str) -> None:
    rt = current_runtime()
    sid = rt.current_session_id()
    await rt.step("s0", effect, sid, "s0", 0, 0.0)
    if kind == "value":
        raise ValueError(message)
    raise QuotaError(message)


def say(line: str) -> None:
    print(line, flush=True)


async def open_store(config: dict[str, Any]) -> SqliteJournalStore | PostgresJournalStore:
    if config["kind"] == "sqlite":
        return SqliteJournalStore(config["target"])
    store = await PostgresJournalStore.connect(config["target"], min_size=1, max_size=4)
    await store.init_schema()
    return store


async def stop_on_sigterm(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            say("SIGTERM: stopping")
            scope.cancel()
            return


async def serve(config: dict[str, Any]) -> None:
    async with (
        await open_store(config) as store,
        JournaledRuntime(store) as rt,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(stop_on_sigterm, tg.cancel_scope)
        served = (job, stuck, fails, ctrl_c)
        tg.start_soon(partial(rt.serve, *served, concurrency=config["concurrency"]))
        say(f"serving {os.getpid()}")
    say("stopped")


async def results(config: dict[str, Any]) -> None:
    async with await open_store(config) as store, JournaledRuntime(store) as rt:
        for sid in config["sessions"]:
            try:
                outcome = {"value": await rt.result(sid, timeout=config["timeout"])}
            except Exception as exc:
                t = type(exc)
                outcome = {"type": f"{t.__module__}.{t.__qualname__}", "message": str(exc)}
            say(json.dumps({"session": sid, **outcome}))


def main() -> None:
    global LOG
    # Ctrl-C must reach this worker whatever its parent ignores: a shell runs background jobs
    # (a CI lane started with `&`) with SIGINT ignored, and children inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = json.loads(sys.argv[1])
    LOG = config.get("log", "")
    mode = {"serve": serve, "result": results}[config["mode"]]
    anyio.run(mode, config, backend=config["loop"])

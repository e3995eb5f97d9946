"""The demo: a small agent, a registered workflow run by a worker on the embedded SQLite journal,
whose worker is killed mid-run; running the command again resumes it through a worker.

Run 1 starts session ``trip-42`` of the workflow (``start``: a pending session) and serves it with a
worker in this process (``serve``): the agent plans a trip with a (fake) model, streams a reply,
searches flights, books one -- and then the process is killed (SIGKILL: no cleanup, no flush,
exactly like an OOM kill or a power cut). Run 2 starts a new worker: it finds the session whose
worker is dead and resumes it, replaying every recorded step from the journal (no second model
bill, no second booking) and running only what had not happened yet. Run 3 finds the session
completed: nothing runs, and its result is read from the journal.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from .._backends.runtimes import SqliteRuntime
from .._core.keys import is_chunks_key, is_workflow_key
from .._core.registry import current_runtime, workflow

SESSION = "trip-42"
REQUEST = "Plan my trip to New York"
DEFAULT_PATH = "jeevesagent-demo.sqlite3"
STEPS = ("plan", "reply", "search_flights", "book_flight", "send_email")


class _Log:
    def __init__(self, crash: bool) -> None:
        self.crash = crash
        self.ran: set[str] = set()
        self.shown: list[str] = []

    def track(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``fn`` so the demo can tell whether it ran or was replayed."""

        def tracked(*args: Any, **kwargs: Any) -> Any:
            self.ran.add(name)
            return fn(*args, **kwargs)

        return tracked

    def show(self, name: str, started: float, detail: str) -> None:
        self.shown.append(name)
        how = "RAN     " if name in self.ran else "replayed"
        ms = (time.perf_counter() - started) * 1000
        print(f"  {how}  {name:<16} {ms:7.1f} ms   {detail}", flush=True)


# What the demo watches, for the workflow body run by the worker (a context variable: the worker's
# tasks inherit it; it is not an argument, because a workflow's arguments are journaled).
_LOG: ContextVar[_Log] = ContextVar("jeevesagent_demo_log")


# -- the "agent": a model, a streamed reply and tools, all fakes with visible costs ---------------


async def call_model(prompt: str) -> dict[str, Any]:
    await anyio.sleep(0.4)  # a slow, paid model call
    return {
        "plan": ["find flights LHR->JFK on 12 Dec", "book the cheapest", "email confirmation"],
        "tokens": 812,
        "prompt": prompt,
    }


async def stream_reply(topic: str) -> AsyncIterator[str]:
    for word in f"Sure - I will plan your {topic} and book the best flight.".split():
        await anyio.sleep(0.03)
        yield word + " "


async def search_flights(origin: str, dest: str) -> list[dict[str, Any]]:
    await anyio.sleep(0.2)
    return [{"flight": "JA101", "price": 412}, {"flight": "JA202", "price": 389}]


async def book_flight(flight: str, price: int) -> dict[str, Any]:
    await anyio.sleep(0.2)  # charges the customer's card: must never happen twice
    return {"confirmation": "JX-7Q2", "flight": flight, "charged": price}


async def send_email(to: str, confirmation: str) -> str:
    await anyio.sleep(0.1)
    return f"email to {to} about {confirmation} sent"


@workflow(name="jeevesagent-demo.trip")
async def trip(request: str) -> dict[str, Any]:
    """The agent, as a workflow: run by a worker (``serve``), resumed by the next one."""
    rt = current_runtime()
    log = _LOG.get()
    print(f"  worker (pid {os.getpid()}) runs session {SESSION!r} from the top:", flush=True)
    t = time.perf_counter()
    plan = await rt.step("plan", log.track("plan", call_model), request)
    log.show("plan", t, f"model call, {plan['tokens']} tokens")

    t = time.perf_counter()
    reply = [w async for w in rt.stream_step("reply", log.track("reply", stream_reply), "trip")]
    log.show("reply", t, f"streamed {len(reply)} chunks: {''.join(reply).strip()!r}")

    t = time.perf_counter()
    flights = await rt.step(
        "search_flights", log.track("search_flights", search_flights), "LHR", "JFK"
    )
    log.show("search_flights", t, f"tool call, {len(flights)} results")

    best = min(flights, key=lambda f: f["price"])
    t = time.perf_counter()
    booking = await rt.step(
        "book_flight", log.track("book_flight", book_flight), best["flight"], best["price"]
    )
    log.show("book_flight", t, f"charged ${booking['charged']}, {booking['confirmation']}")

    if log.crash and "book_flight" in log.ran:
        print(
            f"\n  *** the worker process (pid {os.getpid()}) dies here (SIGKILL), "
            "before emailing the customer ***",
            flush=True,
        )
        print(
            "  Run the same command again: a new worker resumes the session; recorded steps\n"
            "  replay, the rest runs.\n",
            flush=True,
        )
        _die()

    t = time.perf_counter()
    sent = await rt.step(
        "send_email",
        log.track("send_email", send_email),
        "ada@example.com",
        booking["confirmation"],
    )
    log.show("send_email", t, sent)
    return {"confirmation": booking["confirmation"], "charged": booking["charged"], "email": sent}


def _die() -> None:
    sys.stdout.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


async def _describe(rt: SqliteRuntime) -> str:
    """What this run will do, from the session's row and journal."""
    info = next((i for i in await rt.list_sessions() if i.session_id == SESSION), None)
    if info is None:
        return (
            "The journal is empty: start() records the session as pending, and a worker\n"
            "(serve(), in this process) runs it. This run will crash part way.\n"
        )
    journal = await rt.store.load_session(SESSION)  # type: ignore[attr-defined]
    records = sum(
        1
        for key in [*journal.steps, *journal.streams]
        if not is_workflow_key(key) and not is_chunks_key(key)  # chunks: part of a stream
    )
    if info.status == "completed":
        return (
            f"The session completed in an earlier run ({records} steps recorded): the worker\n"
            "has nothing to run, and the result is read from the journal.\n"
        )
    orphans = {i.session_id for i in await rt.orphaned_sessions()}
    if info.status == "running" and SESSION in orphans:
        how = "status 'running', but the worker that ran it is dead"
    else:
        how = f"status {info.status!r}"
    return (
        f"The session has {how}, and {records} recorded steps.\n"
        "A new worker resumes it: recorded steps replay, the rest runs.\n"
    )


def run_demo(path: str = DEFAULT_PATH, *, reset: bool = False, crash: bool = True) -> int:
    db = pathlib.Path(path)
    if reset:
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(db) + suffix).unlink(missing_ok=True)
    print(
        f"jeevesagent.runtime demo: workflow 'jeevesagent-demo.trip', session {SESSION!r}, "
        f"journal {str(db)!r} (SQLite, WAL, synchronous=FULL)"
    )
    log = _Log(crash)
    _LOG.set(log)  # in this thread's context: anyio.run copies it into the event loop's tasks
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with SqliteRuntime(db) as rt:
            print(await _describe(rt))
            handle = await rt.start(trip, SESSION, REQUEST)  # idempotent: same id, same request
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.serve, trip)  # the worker, in this task group
                outcome.update(await handle.result())  # waits until a worker has finished it
                tg.cancel_scope.cancel()  # stop the worker

    started = time.perf_counter()
    anyio.run(main)
    total = (time.perf_counter() - started) * 1000
    ran = len(log.ran)
    replayed = len([name for name in log.shown if name not in log.ran])
    if log.shown:
        print(
            f"\nSession complete in {total:.0f} ms: {ran} step{'' if ran == 1 else 's'} ran, "
            f"{replayed} replayed from the journal. The flight was booked exactly once."
        )
    else:
        print("0 steps ran: the session had completed, so no worker ran its body again.")
    print(f"Result (handle.result()): {outcome}")
    if not log.ran:
        print("Start over with: python -m jeevesagent.runtime demo --reset")
    return 0

"""The demo: a small agent session on the embedded SQLite journal that crashes, then resumes.

Run 1 plans a trip with a (fake) model, streams a reply, searches flights, books one -- and then the
process is killed (SIGKILL: no cleanup, no flush, exactly like an OOM kill or a power cut). Run 2
replays every recorded step from the journal (no second model bill, no second booking) and runs
only what had not happened yet. Run 3 replays everything.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from .._backends.runtimes import SqliteRuntime

SESSION = "trip-42"
DEFAULT_PATH = "jeevesagent-demo.sqlite3"


class _Log:
    def __init__(self) -> None:
        self.ran: set[str] = set()
        self.rows: list[tuple[str, str, float]] = []

    def track(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``fn`` so the demo can tell whether it ran or was replayed."""

        def tracked(*args: Any, **kwargs: Any) -> Any:
            self.ran.add(name)
            return fn(*args, **kwargs)

        return tracked

    def show(self, name: str, started: float, detail: str) -> None:
        how = "RAN     " if name in self.ran else "replayed"
        ms = (time.perf_counter() - started) * 1000
        print(f"  {how}  {name:<16} {ms:7.1f} ms   {detail}", flush=True)


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


async def agent(rt: SqliteRuntime, log: _Log, crash: bool) -> None:
    async with rt.session(SESSION):
        t = time.perf_counter()
        plan = await rt.step("plan", log.track("plan", call_model), "Plan my trip to New York")
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

        if crash and "book_flight" in log.ran:
            print(
                "\n  *** the worker process dies here (SIGKILL), before emailing the customer ***",
                flush=True,
            )
            print(
                "  Run the same command again: recorded steps replay, the rest runs.\n", flush=True
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


def _die() -> None:
    sys.stdout.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


async def _records(path: pathlib.Path) -> int:
    async with SqliteRuntime(path) as rt:
        journal = await rt.store.load_session(SESSION)  # type: ignore[attr-defined]
        return len(journal.steps) + len(journal.streams)


def run_demo(path: str = DEFAULT_PATH, *, reset: bool = False, crash: bool = True) -> int:
    db = pathlib.Path(path)
    if reset:
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(db) + suffix).unlink(missing_ok=True)
    before = anyio.run(_records, db)
    print(
        f"jeevesagent.runtime demo: session {SESSION!r}, journal {str(db)!r} "
        f"(SQLite, WAL, synchronous=FULL)"
    )
    if before == 0:
        print("The journal is empty: every step runs. This run will crash part way.\n")
    else:
        print(f"The journal holds {before} records of this session: they replay, the rest runs.\n")
    log = _Log()

    async def main() -> None:
        async with SqliteRuntime(db) as rt:
            await agent(rt, log, crash)

    started = time.perf_counter()
    anyio.run(main)
    total = (time.perf_counter() - started) * 1000
    ran, replayed = len(log.ran), 5 - len(log.ran)
    print(
        f"\nSession complete in {total:.0f} ms: {ran} step{'' if ran == 1 else 's'} ran, "
        f"{replayed} replayed "
        "from the journal. The flight was booked exactly once."
    )
    if not log.ran:
        print("Everything replayed. Start over with: python -m jeevesagent.runtime demo --reset")
    return 0

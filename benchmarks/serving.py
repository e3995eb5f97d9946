"""The ``serve`` workload (issue 12): throughput of many short workflow sessions, run by a worker
(``rt.start`` then ``rt.serve``) and inline (``rt.run``, one after another and from concurrent
tasks), next to the raw-commit floor measured in the same round. ``run.py`` builds the table.

Every variant runs the same registered workflow (``bench.five``: five small steps, like the record
workload's) on a fresh journal, and checks that every step function ran exactly once and every
session ended ``completed``. Nothing checks timing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import anyio
from harness import now_ns, settle
from stores import BenchStore, floor_rows
from workloads import Calls, step_fn

from jeevesagent.runtime import JournaledRuntime, current_runtime, workflow

__all__ = ["ServeConfig", "serve_round"]

STEPS = 5


@dataclass(frozen=True)
class ServeConfig:
    sessions: int = 1000
    concurrency: tuple[int, ...] = (8, 32)  # serve(concurrency=...) variants
    tasks: int = 8  # concurrent rt.run tasks
    floor_rows: int = 500


class Finished:
    """Bodies that returned in this process (the signal to start looking at the sessions table)."""

    count = 0
    target = 0
    event: anyio.Event | None = None


@workflow(name="bench.five")
async def five(tag: str) -> dict[str, Any]:
    rt = current_runtime()
    last: dict[str, Any] = {}
    for i in range(STEPS):
        last = await rt.step(f"s{i}", step_fn, {"i": i, "text": "hello"})
    Finished.count += 1
    if Finished.count >= Finished.target and Finished.event is not None:
        Finished.event.set()
    return {"tag": tag, "last": last["i"]}


_ids = itertools.count(1)


def _session_ids(prefix: str, n: int) -> list[str]:
    run = next(_ids)
    return [f"{prefix}-{run}-{j:05d}" for j in range(n)]


async def _check(rt: JournaledRuntime, sids: list[str], steps_before: int, what: str) -> None:
    ran = Calls.step - steps_before
    if ran != len(sids) * STEPS:
        raise RuntimeError(f"{what}: expected {len(sids) * STEPS} step calls, got {ran}")
    done = {i.session_id for i in await rt.list_sessions("completed")}
    missing = [s for s in sids if s not in done]
    if missing:
        raise RuntimeError(f"{what}: {len(missing)} sessions not completed, e.g. {missing[0]!r}")
    for sid in (sids[0], sids[-1]):
        result = await rt.result(sid, timeout=10)
        if result != {"tag": sid, "last": STEPS - 1}:
            raise RuntimeError(f"{what}: wrong result for {sid!r}: {result!r}")


async def _all_completed(rt: JournaledRuntime, n: int) -> None:
    """Return once ``n`` sessions are ``completed`` in the store: first wait for the last body
    to return here (no polling load while the worker runs), then poll the sessions table for the
    last results' commits and releases."""
    assert Finished.event is not None
    await Finished.event.wait()
    while len(await rt.list_sessions("completed")) < n:  # noqa: ASYNC110 (polling the store)
        await anyio.sleep(0.001)


async def serve_sessions(store: BenchStore, n: int, concurrency: int) -> tuple[float, float, float]:
    """(seconds to start ``n`` sessions, seconds for ``serve`` to complete them, end to end)."""
    sids = _session_ids(f"serve{concurrency}", n)
    async with store.journal() as journal:
        rt = await store.open_runtime(journal)
        try:
            before = Calls.step
            Finished.count, Finished.target, Finished.event = 0, n, anyio.Event()
            settle()
            start = now_ns()
            for sid in sids:
                await rt.start(five, sid, sid)
            started = now_ns()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: rt.serve(five, concurrency=concurrency))
                await _all_completed(rt, n)
                end = now_ns()
                tg.cancel_scope.cancel()
            await _check(rt, sids, before, f"serve(concurrency={concurrency})")
        finally:
            Finished.event = None
            await rt.aclose()
    return (started - start) / 1e9, (end - started) / 1e9, (end - start) / 1e9


async def run_sessions(store: BenchStore, n: int, tasks: int) -> float:
    """Seconds to ``rt.run`` ``n`` sessions from ``tasks`` concurrent tasks (1: one by one)."""
    sids = _session_ids(f"run{tasks}", n)
    async with store.journal() as journal:
        rt = await store.open_runtime(journal)
        try:
            before = Calls.step
            queue = iter(sids)

            async def runner() -> None:
                for sid in queue:  # the tasks share one iterator: each session runs once
                    await rt.run(five, sid, sid)

            settle()
            start = now_ns()
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(runner)
            elapsed = (now_ns() - start) / 1e9
            await _check(rt, sids, before, f"rt.run x{tasks}")
        finally:
            await rt.aclose()
    return elapsed


async def _floor(store: BenchStore, cfg: ServeConfig) -> float:
    """sessions/s if each of a session's steps cost one raw insert + commit."""
    async with store.journal() as journal:
        settle()
        floor_us = await store.floor_insert(journal, floor_rows("floor", cfg.floor_rows))
    return 1e6 / (STEPS * floor_us)


async def serve_round(store: BenchStore, cfg: ServeConfig) -> dict[str, float]:
    """One round: each variant right after a floor of its own (``floor:<variant>``), so a
    machine whose load changes during the round moves both; all metrics in sessions/s."""
    n, tasks = cfg.sessions, cfg.tasks
    out = {"floor:run1": await _floor(store, cfg), "run1": n / await run_sessions(store, n, 1)}
    out[f"floor:run{tasks}"] = await _floor(store, cfg)
    out[f"run{tasks}"] = n / await run_sessions(store, n, tasks)
    for c in cfg.concurrency:
        out[f"floor:serve{c}"] = await _floor(store, cfg)
        start_s, serve_s, total_s = await serve_sessions(store, n, c)
        out[f"start{c}"] = n / start_s
        out[f"serve{c}"] = n / serve_s
        out[f"e2e{c}"] = n / total_s
    return out

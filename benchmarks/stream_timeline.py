"""Where a recorded SQLite stream step's time goes, phase by phase, with and without the alarm.

    python benchmarks/stream_timeline.py [--backend asyncio|trio] [--journals 25]

For each of ``--journals`` fresh journal files, a ``SqliteRuntime`` records a step and a short
stream in a session of their own (the warm-up of ``run.py``'s stream rows), opens a second
session and drains one stream step of 200 chunks of 50 B, timestamping: the first chunk, the
other 199, the hand-off of the complete stream to the store (encoding, group commit), the store
thread's wake-up, the write and its fsync in the thread, and the wake-up back. Then the same
with the session's alarm switched off, so each stream starts its flush task as before the third
round of issue 14 ("task per stream"), alternating journal by journal. Prints medians in µs.

It times the phases by wrapping private functions of the package (``Recorder.flush``,
``WorkerThread.run``, ``BatchJob.call``, ``SessionAlarm.call_at``): a diagnostic for this
tree, not an API. A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from jeevesagent.runtime import SqliteRuntime
from jeevesagent.runtime._backends import thread as worker_thread
from jeevesagent.runtime._journaled import recorder as recorder_module
from jeevesagent.runtime._journaled.alarm import SessionAlarm

CHUNKS = [f"chunk {i:04d} ".encode().ljust(50, b".") for i in range(200)]
MARKS: dict[str, list[float]] = {}


def _mark(name: str) -> None:
    MARKS.setdefault(name, []).append(time.perf_counter())


def _instrument() -> None:
    flush, run, call = (
        recorder_module.Recorder.flush,
        worker_thread.WorkerThread.run,
        worker_thread.BatchJob.call,
    )

    async def timed_flush(self: Any, state: Any) -> None:
        _mark("flush")
        try:
            await flush(self, state)
        finally:
            _mark("flushed")

    async def timed_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        _mark("submitted")
        return await run(self, *args, **kwargs)

    def timed_call(self: Any, resource: Any) -> bool:
        _mark("thread start")
        try:
            return call(self, resource)
        finally:
            _mark("thread end")

    recorder_module.Recorder.flush = timed_flush  # type: ignore[method-assign]
    worker_thread.WorkerThread.run = timed_run  # type: ignore[method-assign]
    worker_thread.BatchJob.call = timed_call  # type: ignore[method-assign]


async def _producer() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk


async def _two() -> AsyncIterator[bytes]:
    for chunk in CHUNKS[:2]:
        yield chunk


async def _one_journal(folder: str) -> dict[str, float]:
    async with SqliteRuntime(os.path.join(folder, "journal.sqlite3")) as rt:
        gc.collect()
        async with rt.session("warm"):
            await rt.step("first", len, "warm")
            async for _ in rt.stream_step("first stream", _two):
                pass
        async with rt.session("timed"):
            MARKS.clear()
            start = time.perf_counter()
            count = 0
            async for _ in rt.stream_step("s", _producer):
                count += 1
                if count == 1:
                    first = time.perf_counter()
                elif count == len(CHUNKS):
                    last = time.perf_counter()
            end = time.perf_counter()
    # The first of each mark after the last chunk: the stream's one commit.
    at = {name: min(t for t in times if t > last) for name, times in MARKS.items()}
    phases = [
        ("first chunk (the stream step opens)", start, first),
        ("the other 199 pulls", first, last),
        ("to the store: encoding, group commit", last, at["submitted"]),
        ("store thread wakes", at["submitted"], at["thread start"]),
        ("write + fsync, in the thread", at["thread start"], at["thread end"]),
        ("event loop wakes, caller resumes", at["thread end"], end),
        ("total", start, end),
    ]
    return {name: (b - a) * 1e6 for name, a, b in phases}


async def main(journals: int) -> None:
    _instrument()
    call_at = SessionAlarm.call_at

    def refuse(self: SessionAlarm, when: float, fn: Callable[[], object]) -> bool:
        return False  # as if no heartbeat served the alarm: a flush task per stream

    samples: dict[str, dict[str, list[float]]] = {"alarm": {}, "task per stream": {}}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(journals):
            for mode, method in (("alarm", call_at), ("task per stream", refuse)):
                SessionAlarm.call_at = method  # type: ignore[method-assign]
                sub = os.path.join(folder, f"{i}-{len(samples[mode])}-{mode[0]}")
                os.mkdir(sub)
                for name, value in (await _one_journal(sub)).items():
                    samples[mode].setdefault(name, []).append(value)
    SessionAlarm.call_at = call_at  # type: ignore[method-assign]
    print(f"one 200-chunk stream step, SQLite; medians of {journals} journals, µs")
    print(f"  {'phase':40s} {'alarm':>8s} {'task per stream':>16s}")
    for name in samples["alarm"]:
        a = statistics.median(samples["alarm"][name])
        b = statistics.median(samples["task per stream"][name])
        print(f"  {name:40s} {a:8.0f} {b:16.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--journals", type=int, default=25)
    args = parser.parse_args()
    anyio.run(main, args.journals, backend=args.backend)

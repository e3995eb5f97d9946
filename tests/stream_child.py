"""The child process of test_stream_processes.py: one session running one stream step.

Run as ``python -c "from tests.stream_child import main; main()" CONFIG`` (CONFIG: a JSON object
with ``kind``, ``target``, ``loop``, ``session``, ``n``, ``ask``, ``hold_at``, ``gate``) with the
checkout on ``PYTHONPATH``. The producer yields the ints ``0..n-1`` (from
``len(current_stream_prefix())`` if ``ask``); before chunk ``hold_at`` it waits until the file
``gate`` exists. Printed, one line each, flushed: ``prefix K`` (what the producer learned, if it
asked), ``produced I`` (each chunk the producer yields), ``got I`` (each chunk the consumer
gets), ``done``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SqliteJournalStore,
    current_stream_prefix,
)


def say(line: str) -> None:
    print(line, flush=True)


# Not arguments of the stream step: they differ between a run and its resumption, which must
# call the stream step with the same arguments (its journal key).
HOLD: dict[str, Any] = {"at": -1, "gate": ""}


async def produce(n: int, ask: bool) -> AsyncIterator[int]:
    hold_at, gate = HOLD["at"], HOLD["gate"]
    start = 0
    if ask:
        start = len(current_stream_prefix())
        say(f"prefix {start}")
    for i in range(start, n):
        if i == hold_at:
            # A file written by another process: polled (a stat of a local file does not block).
            while not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
                await anyio.sleep(0.01)
        await anyio.sleep(0.002)
        say(f"produced {i}")
        yield i


async def run(config: dict[str, Any]) -> None:
    store: SqliteJournalStore | PostgresJournalStore
    if config["kind"] == "sqlite":
        store = SqliteJournalStore(config["target"])
    else:
        store = await PostgresJournalStore.connect(config["target"], min_size=1, max_size=4)
    options = {"stream_flush_interval": 0.02, "stream_flush_chunks": 8}
    async with store, JournaledRuntime(store, poll_interval=0.02, **options) as rt:
        say("ready")
        async with rt.session(config["session"], wait=30):
            async for chunk in rt.stream_step("reply", produce, config["n"], config["ask"]):
                say(f"got {chunk}")
        say("done")


def main() -> None:
    config = json.loads(sys.argv[1])
    HOLD.update(at=config.get("hold_at", -1), gate=config.get("gate", ""))
    anyio.run(run, config, backend=config["loop"])

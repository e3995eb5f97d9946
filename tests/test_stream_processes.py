"""Live and resumable streams across real processes (issue 13, part B), on SQLite (a file) and
Postgres (a schema): a stream read live by this process while a child process produces it; a
child SIGKILLed mid-stream, and a resume in another child (on the other event loop) whose
consumer gets the recorded prefix once and then the rest -- with a producer that asks for the
prefix (``current_stream_prefix()``) and one that does not; ``read_stream`` from offset k
returns exactly the chunks from k, also reconnecting mid-stream.

The producer (tests/stream_child.py) yields the ints ``0..n-1`` and, before chunk ``hold_at``,
waits for a gate file this test writes, so "while it is produced" is a fact the test arranges,
not a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SqliteJournalStore,
)

ROOT = Path(__file__).resolve().parent.parent
OTHER = {"asyncio": "trio", "trio": "asyncio"}
WITHIN = 60  # seconds for any one wait of a test (they take a fraction of one)
N = 60
HOLD = 30  # the producer waits for the gate before this chunk


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Child:
    def __init__(self, process: Process, out: Path, err: Path) -> None:
        self.process = process
        self.out = out
        self.err = err

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def numbers(self, what: str) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith(what + " ")]

    async def expect(self, line: str) -> None:
        with anyio.fail_after(WITHIN):
            while line not in self.lines():
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"child ended ({self.process.returncode}) before {line!r}: "
                        f"{self.lines()}\n{self.err.read_text()}"
                    )
                await anyio.sleep(0.01)


@asynccontextmanager
async def child(
    tmp: Path, name: str, kind: str, target: str, loop: str, **config: Any
) -> AsyncIterator[Child]:
    config = {"kind": kind, "target": target, "loop": loop, "n": N, **config}
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    code = "from tests.stream_child import main; main()"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", code, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        yield Child(process, out, err)
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


@pytest.fixture
async def reader(
    store_kind: str, store_target: str, anyio_backend: Any
) -> AsyncIterator[JournaledRuntime]:
    """This process's runtime on the test's store: it only reads streams."""
    store: SqliteJournalStore | PostgresJournalStore
    if store_kind == "sqlite":
        store = SqliteJournalStore(store_target)
    else:
        store = await PostgresJournalStore.connect(store_target, min_size=1, max_size=4)
        await store.init_schema()
    async with store, JournaledRuntime(store, poll_interval=0.02) as rt:
        yield rt


async def read_some(rt: JournaledRuntime, sid: str, count: int, offset: int = 0) -> list[Any]:
    got: list[Any] = []
    with anyio.fail_after(WITHIN):
        async for chunk in rt.read_stream(sid, "reply", offset=offset):
            got.append(chunk)
            if len(got) == count:
                break
    return got


@pytest.mark.slow
async def test_a_stream_is_read_live_by_another_process_and_from_any_offset(
    reader: JournaledRuntime,
    store_kind: str,
    store_target: str,
    anyio_backend: Any,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    loop = OTHER[anyio_backend[0]]
    config = {"session": "live", "ask": False, "hold_at": HOLD, "gate": str(gate)}
    async with child(tmp_path, "producer", store_kind, store_target, loop, **config) as producer:
        # The first HOLD chunks, read while the producer is held before chunk HOLD: live.
        first = await read_some(reader, "live", 10)
        assert first == list(range(10))
        rest_of_held = await read_some(reader, "live", HOLD - 10, offset=10)  # a reconnect
        assert rest_of_held == list(range(10, HOLD))
        assert "done" not in producer.lines()
        assert max(producer.numbers("produced")) == HOLD - 1  # held: nothing after it yet
        gate.touch()
        with anyio.fail_after(WITHIN):
            tail = [c async for c in reader.read_stream("live", "reply", offset=HOLD)]
        assert tail == list(range(HOLD, N))
        await producer.expect("done")
        assert producer.numbers("got") == list(range(N))
    # After it completed: any offset, exactly the chunks from there.
    for k in (0, 1, 7, N - 1, N):
        with anyio.fail_after(WITHIN):
            assert [c async for c in reader.read_stream("live", "reply", offset=k)] == list(
                range(k, N)
            )


@pytest.mark.slow
@pytest.mark.parametrize("ask", [True, False], ids=["asks-prefix", "starts-over"])
async def test_a_stream_killed_midway_resumes_with_the_prefix_once_then_the_rest(
    reader: JournaledRuntime,
    store_kind: str,
    store_target: str,
    anyio_backend: Any,
    tmp_path: Path,
    ask: bool,
) -> None:
    gate = tmp_path / "gate"  # never written: the first producer is killed while held
    first_loop, second_loop = anyio_backend[0], OTHER[anyio_backend[0]]
    config = {"session": "crash", "ask": ask, "hold_at": HOLD, "gate": str(gate)}
    async with child(tmp_path, "first", store_kind, store_target, first_loop, **config) as first:
        # Everything up to the hold is journaled (the stalled stream's last chunks too).
        assert await read_some(reader, "crash", HOLD) == list(range(HOLD))
        first.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(WITHIN):
            await first.process.wait()
    assert first.numbers("got") == list(range(HOLD))
    config["hold_at"] = -1
    async with child(tmp_path, "second", store_kind, store_target, second_loop, **config) as second:
        # A reader that follows the resumed stream from where it stopped.
        with anyio.fail_after(WITHIN):
            tail = [c async for c in reader.read_stream("crash", "reply", offset=HOLD)]
        await second.expect("done")
    assert tail == list(range(HOLD, N))
    # The resumed consumer: the recorded prefix once, then the rest -- N chunks in order.
    assert second.numbers("got") == list(range(N))
    produced = second.numbers("produced")
    if ask:
        # The producer learned the prefix and went on from it.
        assert second.numbers("prefix") == [HOLD]
        assert produced == list(range(HOLD, N))
    else:
        # It started over: its first HOLD chunks were dropped, not delivered again.
        assert second.numbers("prefix") == []
        assert produced == list(range(N))

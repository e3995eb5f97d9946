"""Durability: with the default ``durability="commit"`` a step whose result the caller has seen is
never lost, even when the process is killed; with ``durability="buffered"`` steps return before
their commit, and the journal is always a consistent prefix.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    JournalEntry,
    PostgresJournalStore,
    SqliteJournalStore,
    StoreError,
)
from jeevesagent.runtime._core.keys import describe_key
from jeevesagent.runtime._journal.backend import JournalBackend

from .conftest import StoreFactory

ROOT = Path(__file__).resolve().parent.parent


async def test_buffered_steps_return_before_commit_and_commit_at_exit(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    observer = await store_factory.new()
    rt = JournaledRuntime(store, durability="buffered", flush_interval=60)
    async with rt.session("s"):
        for i in range(5):
            assert await rt.step(f"s{i}", lambda i=i: i * 10) == i * 10
        assert await rt.step("s3", lambda: "not called") == 30  # replayed from memory
        assert (await observer.load_session("s")).steps == {}  # nothing committed yet
    assert len((await observer.load_session("s")).steps) == 5  # the exit committed all of them


async def test_buffered_records_commit_within_the_flush_interval(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    observer = await store_factory.new()
    rt = JournaledRuntime(store, durability="buffered", flush_interval=0.01)
    async with rt.session("s"):
        await rt.step("a", lambda: 1)
        with anyio.fail_after(5):
            while not (await observer.load_session("s")).steps:  # noqa: ASYNC110 -- another store
                await anyio.sleep(0.01)


async def test_buffered_records_commit_before_a_signal_wait_blocks(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    observer = await store_factory.new()
    rt = JournaledRuntime(store, durability="buffered", flush_interval=60)
    async with rt.session("s"), anyio.create_task_group() as tg:
        await rt.step("a", lambda: 1)
        tg.start_soon(rt.wait_for_signal, "s", "go")
        # flush_interval is a minute: only the wait itself can have committed the step.
        with anyio.fail_after(5):
            while not (await observer.load_session("s")).steps:  # noqa: ASYNC110 -- another store
                await anyio.sleep(0.01)
        await rt.signal("s", "go", None)


async def test_buffered_mode_works_with_a_five_method_store() -> None:
    class Foreign:
        """Only the five published methods: the runtime reaches it through its adapter."""

        def __init__(self) -> None:
            self.steps: dict[tuple[str, str], JournalEntry] = {}
            self.puts: list[str] = []

        async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
            return self.steps.get((session_id, step_name))

        async def put_step(self, session_id: str, step_name: str, value: object) -> None:
            self.puts.append(step_name)
            self.steps.setdefault((session_id, step_name), JournalEntry(value, 0.0))

        async def get_stream(self, session_id: str, step_name: str) -> None:
            return None

        async def put_stream(self, session_id: str, step_name: str, chunks: list[object]) -> None:
            raise AssertionError("no stream step here")

        async def aclose(self) -> None:
            pass

    store = Foreign()
    calls: list[int] = []
    async with JournaledRuntime(store, durability="buffered", flush_interval=60) as rt:
        async with rt.session("s"):
            for i in range(3):
                assert await rt.step(f"step_{i}", calls.append, i) is None
            assert store.puts == [], "buffered: nothing is written before the flush"
        # The session's exit committed them, in order.
        assert [key.split(":")[1] for key in store.puts] == ["step_0", "step_1", "step_2"]
        async with rt.session("s"):
            for i in range(3):
                await rt.step(f"step_{i}", calls.append, i)
    assert calls == [0, 1, 2]


def test_durability_must_be_commit_or_buffered() -> None:
    with pytest.raises(ValueError, match="durability"):
        JournaledRuntime(durability="sometimes")  # type: ignore[arg-type]


async def test_a_failed_buffered_commit_stops_the_session(tmp_path: Path) -> None:
    class FailingStore(SqliteJournalStore):
        fail = False

        async def write_rows(self, records, owners=None):  # type: ignore[no-untyped-def]
            if self.fail:
                raise OSError("disk full")
            return await super().write_rows(records, owners)

    store = FailingStore(tmp_path / "j.sqlite3")
    rt = JournaledRuntime(store, durability="buffered", flush_interval=60)

    async def run_then_break_the_disk() -> None:
        async with rt.session("s"):
            await rt.step("a", lambda: 1)
            store.fail = True  # the exit's commit fails

    with pytest.raises(StoreError, match="could not be committed") as info:
        await run_then_break_the_disk()
    assert info.value.session_id == "s"
    store.fail = False
    async with rt.session("s"):
        assert await rt.step("a", lambda: 2) == 2  # nothing was committed: it runs again
    await store.aclose()


# -- crash tests: a child process is killed with SIGKILL part way through a session -------------

CHILD = textwrap.dedent(
    """
    import sys, anyio
    from jeevesagent.runtime import JournaledRuntime, SqliteJournalStore, PostgresJournalStore

    kind, target, durability, backend = sys.argv[1:5]

    async def main():
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target)
            await store.init_schema()
        rt = JournaledRuntime(store, durability=durability, flush_interval=0.002)
        async with rt.session("crash"):
            for i in range(100_000):
                await rt.step(f"s{i}", lambda i=i: {"i": i})
                print(f"returned {i}", flush=True)

    anyio.run(main, backend=backend)
    """
)


def recorded_indices(kind: str, target: str) -> list[int]:
    async def load() -> list[int]:
        store: JournalBackend
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target)
        async with store:
            journal = await store.load_session("crash")
        return sorted(int(describe_key(k)[1:]) for k in journal.steps)

    return anyio.run(load)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("durability", ["commit", "buffered"])
@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_killed_process_loses_no_step_whose_result_was_seen(
    store_kind: str, durability: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kind = store_kind
    target = (
        str(tmp_path / "crash.sqlite3")
        if kind == "sqlite"
        else str(request.getfixturevalue("pg_schema_dsn"))
    )
    kill_after = random.Random(f"{kind}{durability}{backend}").randint(5, 60)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, target, durability, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    seen = -1
    try:
        for line in child.stdout:
            seen = int(line.split()[1])
            if seen >= kill_after:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
        # The child ran on while we read: lines it printed before it died are still in the pipe.
        # The last of them is the last step whose result the child's code saw.
        for line in child.stdout.read().splitlines():
            seen = int(line.split()[1])
        stderr = child.stderr.read() if child.stderr else ""
        child.stdout.close()
        if child.stderr:
            child.stderr.close()
    assert seen >= kill_after, f"child stopped early: {stderr}"
    recorded = recorded_indices(kind, target)
    # Consistent prefix: a later record never survives without the earlier ones.
    assert recorded == list(range(len(recorded)))
    if durability == "commit":
        # Every step whose result the caller saw (it printed it before it died) is in the
        # journal; at most the one in flight (after its commit, before its print) is ahead.
        assert seen + 1 <= len(recorded) <= seen + 2

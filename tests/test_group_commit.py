"""Group commit: concurrent sessions share transactions; each caller returns once its own record
is committed; a session's records commit in order; a failed transaction fails every caller in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, StoreError
from jeevesagent.runtime._store import STEP, InMemoryJournalStore, NativeStore, Record, Row

from .conftest import StoreFactory


# The in-memory store commits without yielding, so there is nothing to batch there.
@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_concurrent_sessions_share_commits(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    rt = JournaledRuntime(store)
    sessions, steps = 20, 5

    async def session(n: int) -> None:
        async with rt.session(f"s{n}"):
            for i in range(steps):
                assert await rt.step(f"step{i}", lambda i=i: i) == i

    async with anyio.create_task_group() as tg:
        for n in range(sessions):
            tg.start_soon(session, n)
    commits = store._committer.commits
    assert commits < sessions * steps / 2, f"{commits} commits for {sessions * steps} records"

    reopened = await store_factory.new()
    for n in range(sessions):
        journal = await reopened.load_session(f"s{n}")
        assert len(journal.steps) == steps


class SlowStore(InMemoryJournalStore):
    """Commits wait on a gate; a transaction holding a key in ``fail_keys`` fails."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail_keys: set[str] = set()
        self.gate = anyio.Event()

    async def _insert(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        await self.gate.wait()
        self.batches.append([r.key for r in records])
        if self.fail_keys & {r.key for r in records}:
            raise OSError("disk on fire")
        return await super()._insert(records, owners)


def record(session: str, key: str) -> Record:
    return Record(session, STEP, key, b"x", 0.0)


async def test_callers_waiting_behind_a_commit_go_together_in_order() -> None:
    store = SlowStore()
    results: list[str] = []

    async def append(session: str, key: str) -> None:
        await store.append([record(session, key)])
        results.append(key)

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "a", "a1")  # the leader: blocks on the gate
        await anyio.wait_all_tasks_blocked()
        for key in ("b1", "a2", "c1"):  # one by one: the queue order is the arrival order
            tg.start_soon(append, key[0], key)
            await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.batches == [["a1"], ["b1", "a2", "c1"]]
    assert sorted(results) == ["a1", "a2", "b1", "c1"]
    assert store._committer.commits == 2


async def test_a_failed_transaction_fails_every_caller_in_it_and_the_next_batch_proceeds() -> None:
    store = SlowStore()
    store.fail_keys = {"x3"}
    errors: dict[str, BaseException] = {}

    async def append(key: str) -> None:
        try:
            await store.append([record("s", key)])
        except Exception as exc:
            errors[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "x1")  # leader of batch 1, waits on the gate
        await anyio.wait_all_tasks_blocked()
        for key in ("x2", "x3", "x4"):  # batch 2, in this order: fails because of x3
            tg.start_soon(append, key)
            await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.batches == [["x1"], ["x2", "x3", "x4"]]
    assert set(errors) == {"x2", "x3", "x4"}
    assert len({id(e) for e in errors.values()}) == 3  # never one exception object in two tasks
    assert isinstance(errors["x2"], OSError)  # the leader of the batch gets the driver's error
    for key in ("x3", "x4"):
        assert isinstance(errors[key], StoreError)
        assert errors[key].step == key
        assert isinstance(errors[key].__cause__, OSError)
    assert [k for _, k in store.step_keys()] == ["x1"]  # nothing of the failed batch recorded
    # The committer is usable again.
    store.fail_keys = set()
    await store.append([record("s", "x5")])
    assert [k for _, k in store.step_keys()] == ["x1", "x5"]


async def test_a_cancelled_caller_still_learns_its_record_was_committed() -> None:
    store = SlowStore()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.append, [record("s", "k")])
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            store.gate.set()
    assert ("s", "k") in store.step_keys()


async def test_native_store_put_step_goes_through_group_commit(store: NativeStore) -> None:
    before = store._committer.commits
    await store.put_step("s", "k", 1)
    assert store._committer.commits == before + 1

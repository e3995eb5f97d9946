"""Group commit: concurrent sessions share transactions; each caller returns once its own record
is committed; a session's records commit in order; a failed transaction is retried per caller, so
it fails only the caller whose record failed (and that session's later records).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from jeevesagent.runtime import JournaledRuntime, StoreError
from jeevesagent.runtime._journal.backend import STEP, JournalBackend, Record, Row
from jeevesagent.runtime._journal.memory import InMemoryJournalStore

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
    commits = store.commits
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

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        await self.gate.wait()
        self.batches.append([r.key for r in records])
        if self.fail_keys & {r.key for r in records}:
            raise OSError("disk on fire")
        return await super().write_rows(records, owners)


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
    assert store.commits == 2


async def test_a_failed_record_fails_only_its_caller_and_its_sessions_later_records() -> None:
    """A batch fails because of one record: every caller's records are committed again on their
    own, so only that caller fails -- and the records of its session queued after it (no gap in
    that session's journal); the other sessions' callers succeed."""
    store = SlowStore()
    store.fail_keys = {"t1"}
    errors: dict[str, BaseException] = {}

    async def append(session: str, key: str) -> None:
        try:
            await store.append([record(session, key)])
        except Exception as exc:
            errors[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "s", "x1")  # leader of batch 1, waits on the gate
        await anyio.wait_all_tasks_blocked()
        for session, key in (("s", "s2"), ("t", "t1"), ("u", "u1"), ("t", "t2")):
            tg.start_soon(append, session, key)  # batch 2, in this order: fails because of t1
            await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.batches[:2] == [["x1"], ["s2", "t1", "u1", "t2"]]
    assert store.batches[2:] == [["s2"], ["t1"], ["u1"]]  # each caller alone; t2 not tried
    assert set(errors) == {"t1", "t2"}
    assert isinstance(errors["t1"], OSError)  # the caller of the bad record: the driver's error
    assert isinstance(errors["t2"], StoreError)
    assert errors["t2"].session_id == "t"
    assert "earlier record of this session failed" in str(errors["t2"])
    assert sorted(k for _, k in store.step_keys()) == ["s2", "u1", "x1"]
    # The committer is usable again.
    store.fail_keys = set()
    await store.append([record("t", "t1")])
    assert ("t", "t1") in store.step_keys()


async def test_a_failed_transaction_of_one_caller_fails_it_and_the_next_batch_proceeds() -> None:
    store = SlowStore()
    store.fail_keys = {"x2"}
    errors: dict[str, BaseException] = {}

    async def append(key: str) -> None:
        try:
            await store.append([record("s", key)])
        except Exception as exc:
            errors[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "x1")  # leader of batch 1, waits on the gate
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(append, "x2")  # batch 2: alone, fails
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.batches == [["x1"], ["x2"]]
    assert set(errors) == {"x2"}
    assert isinstance(errors["x2"], OSError)
    store.fail_keys = set()
    await store.append([record("s", "x3")])
    assert [k for _, k in store.step_keys()] == ["x1", "x3"]


async def test_a_cancelled_caller_still_learns_its_record_was_committed() -> None:
    store = SlowStore()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.append, [record("s", "k")])
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            store.gate.set()
    assert ("s", "k") in store.step_keys()


async def test_cancelled_waiting_callers_still_see_their_batch_through_then_are_cancelled() -> None:
    # A caller waiting for its batch's outcome (a follower) or for its batch's turn (the leader
    # of a queued batch) enters no cancel scope unless cancelled. Cancelled, each still waits:
    # the follower returns its outcome, the queued leader commits its whole batch (other callers'
    # records too), and both are cancelled at their next checkpoint.
    store = SlowStore()
    outcome: dict[str, list[str]] = {}

    async def append(key: str) -> None:
        seen = outcome.setdefault(key, [])
        try:
            await store.append([record(key, key)])
            seen.append("returned")
            await anyio.lowlevel.checkpoint()
            seen.append("went on")
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    async def cancellable(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as inner:
                inner.start_soon(append, "q1")  # leads batch 2, waits for its turn
                await anyio.wait_all_tasks_blocked()
                inner.start_soon(append, "q2")  # joins batch 2, waits for its outcome
                await anyio.wait_all_tasks_blocked()
                task_status.started(scope)

    with anyio.fail_after(10):  # a cancelled queued leader that left would hang the others
        async with anyio.create_task_group() as tg:
            tg.start_soon(append, "x1")  # leads batch 1, waits on the gate
            await anyio.wait_all_tasks_blocked()
            scope = await tg.start(cancellable)
            tg.start_soon(append, "q3")  # joins batch 2 too, not cancelled
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            waiting = [*outcome["q1"], *outcome["q2"]]  # nothing yet: still waiting, shielded
            store.gate.set()
    assert waiting == []
    assert store.batches == [["x1"], ["q1", "q2", "q3"]]
    assert outcome == {
        "x1": ["returned", "went on"],
        "q1": ["returned", "cancelled"],
        "q2": ["returned", "cancelled"],
        "q3": ["returned", "went on"],
    }
    assert {k for _, k in store.step_keys()} == {"x1", "q1", "q2", "q3"}


def test_asyncio_task_cancel_of_a_waiting_caller_comes_after_its_outcome() -> None:
    # asyncio's own Task.cancel() is edge-triggered: a waiting caller that took it in would lose
    # it if it only returned. It waits for its batch's outcome, then raises it.
    async def main() -> None:
        store = SlowStore()
        leader = asyncio.create_task(store.append([record("s", "x1")]))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(store.append([record("t", "t1")]))
        await asyncio.sleep(0.01)
        follower.cancel()
        await asyncio.sleep(0.01)
        assert not follower.done()  # still waiting for the outcome
        store.gate.set()
        await leader
        with pytest.raises(asyncio.CancelledError):
            await follower
        assert {k for _, k in store.step_keys()} == {"x1", "t1"}

    asyncio.run(main())


async def test_native_store_put_step_goes_through_group_commit(store: JournalBackend) -> None:
    before = store.commits
    await store.put_step("s", "k", 1)
    assert store.commits == before + 1


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "postgres"])
async def test_a_lone_commit_on_a_built_in_store_outlives_its_cancelled_caller(
    store_factory: StoreFactory,
) -> None:
    # The committer leads a lone batch without a cancel scope of its own on these stores (their
    # write_rows shield themselves): cancelled while the store writes, the record still commits,
    # and the cancellation comes after it.
    store = await store_factory.new()
    assert store._committer._shielded
    for n in range(5):
        outcome: list[str] = []

        async def append(n: int = n, outcome: list[str] = outcome) -> None:
            try:
                await store.append([record("s", f"k{n}")])
                outcome.append("returned")
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(append)
                await anyio.wait_all_tasks_blocked()  # in the store's write, or done
                scope.cancel()
        assert outcome == ["returned"]
        assert f"k{n}" in (await store.load_session("s")).steps


def test_the_committer_shields_a_write_rows_not_declared_to_shield_itself() -> None:
    assert SlowStore()._committer._shielded is False  # overrides write_rows, declares nothing
    assert InMemoryJournalStore()._committer._shielded is True

    class Declared(SlowStore):
        write_rows_shielded = True  # declared on a class that does not define write_rows

    assert Declared()._committer._shielded is False

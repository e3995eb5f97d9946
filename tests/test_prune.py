"""Retention: ``JournalBackend.prune`` deletes whole sessions (journal rows, pending signals and the
sessions row) by age, id and status, on every bundled store, and never a session a live runtime
holds."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, StoreClosedError
from jeevesagent.runtime._journal.backend import SESSION_STATUSES, JournalBackend, PruneResult

from .conftest import StoreFactory


class Boom(Exception):
    pass


async def run(store: JournalBackend, session_id: str, *, fail: bool = False) -> list[str]:
    """Run a two-step session on ``store``; returns the steps that actually ran (not replayed)."""
    ran: list[str] = []

    def step(name: str) -> str:
        ran.append(name)
        return f"{session_id}:{name}"

    async with JournaledRuntime(store) as rt, rt.session(session_id):
        await rt.step("one", step, "one")
        await rt.step("two", step, "two")
        if fail:
            raise Boom(session_id)
    return ran


async def run_failed(store: JournalBackend, session_id: str) -> None:
    with pytest.raises(Boom):
        await run(store, session_id, fail=True)


async def session_ids(store: JournalBackend) -> list[str]:
    return sorted(i.session_id for i in await store.list_sessions(None))


async def rows(store: JournalBackend, session_id: str) -> int:
    journal = await store.load_session(session_id)
    return len(journal.steps) + len(journal.streams)


async def test_prune_by_age(store: JournalBackend) -> None:
    await run(store, "old")
    await anyio.sleep(1.0)
    await run(store, "new")
    assert await store.prune(older_than=3600) == PruneResult([], [])
    assert await store.prune(older_than=0.5) == PruneResult(["old"], [])
    assert await session_ids(store) == ["new"]
    assert await rows(store, "old") == 0
    assert await rows(store, "new") == 2
    await anyio.sleep(0.05)
    assert await store.prune(older_than=0) == PruneResult(["new"], [])
    assert await session_ids(store) == []


async def test_prune_by_session_id(store: JournalBackend) -> None:
    for sid in ("a", "b", "c"):
        await run(store, sid)
    result = await store.prune(sessions=["c", "a", "missing"])
    assert result == PruneResult(["a", "c"], [])
    assert await session_ids(store) == ["b"]
    assert (await rows(store, "a"), await rows(store, "b")) == (0, 2)
    # A single id as a plain string is one id, not its characters.
    assert await store.prune(sessions="b") == PruneResult(["b"], [])


async def test_prune_by_status(store: JournalBackend) -> None:
    await run(store, "done")
    await run_failed(store, "broken")
    await run_failed(store, "broken-2")
    assert await store.prune(status="failed") == PruneResult(["broken", "broken-2"], [])
    assert await session_ids(store) == ["done"]
    assert await store.prune(status=["cancelled", "imported"]) == PruneResult([], [])
    assert await store.prune(status=("completed", "failed")) == PruneResult(["done"], [])


async def test_filters_combine(store: JournalBackend) -> None:
    await run(store, "a")
    await run(store, "b")
    await run_failed(store, "f")
    assert await store.prune(status="completed", sessions=["a", "f"]) == PruneResult(["a"], [])
    assert await store.prune(status="failed", older_than=3600) == PruneResult([], [])
    await anyio.sleep(0.05)
    assert await store.prune(status="failed", older_than=0, sessions=["b", "f"]) == PruneResult(
        ["f"], []
    )
    assert await session_ids(store) == ["b"]


async def test_dry_run_reports_and_deletes_nothing(store: JournalBackend) -> None:
    await run(store, "a")
    await run_failed(store, "f")
    await store.send_signal("a", "go", b"x", time.time())
    before = await store.list_sessions(None)
    await anyio.sleep(0.05)
    dry = await store.prune(older_than=0, dry_run=True)
    assert dry == PruneResult(["a", "f"], [])
    assert await store.list_sessions(None) == before
    assert (await rows(store, "a"), await rows(store, "f")) == (2, 2)
    assert await store.pending_signals("a") == 1
    assert await store.prune(older_than=0) == dry


async def test_a_session_held_by_a_live_runtime_is_skipped(store: JournalBackend) -> None:
    await run(store, "done")
    async with JournaledRuntime(store) as rt, rt.session("live"):
        await rt.step("one", lambda: 1)
        await anyio.sleep(0.05)
        assert await store.prune(sessions=["live"]) == PruneResult([], ["live"])
        assert await store.prune(older_than=0) == PruneResult(["done"], ["live"])
        assert await store.prune(status="running", dry_run=True) == PruneResult([], ["live"])
        assert await rows(store, "live") == 1
        # The session goes on normally: its claim and journal are intact.
        assert await rt.step("two", lambda: 2) == 2
    [info] = await store.list_sessions(None)
    assert (info.session_id, info.status, info.steps) == ("live", "completed", 2)
    assert await store.prune(sessions=["live"]) == PruneResult(["live"], [])


async def test_an_expired_claim_does_not_protect_a_session(store: JournalBackend) -> None:
    info = await store.claim("crashed", "dead-owner", 0.05)
    assert info.owner == "dead-owner"
    await store.put_step("crashed", "k", 1)
    await anyio.sleep(0.3)
    assert await store.prune(sessions=["crashed"]) == PruneResult(["crashed"], [])
    assert await store.get_step("crashed", "k") is None


async def test_pending_signals_of_a_pruned_session_are_gone(store: JournalBackend) -> None:
    await run(store, "a")
    await run(store, "b")
    async with JournaledRuntime(store) as rt:
        await rt.signal("a", "approve", {"ok": True})
        await rt.signal("a", "other", 1)
        await rt.signal("b", "approve", {"ok": False})
    assert await store.pending_signals("a") == 2
    assert await store.prune(sessions=["a"]) == PruneResult(["a"], [])
    assert await store.pending_signals("a") == 0
    assert await store.pending_names("a") == []
    assert await store.pending_signals("b") == 1


async def test_signals_to_a_session_that_never_ran_can_be_pruned(store: JournalBackend) -> None:
    await store.send_signal("never-ran", "go", b"x", time.time())
    # It has no sessions row, so no status: a status filter never matches it.
    assert await store.prune(status=list(SESSION_STATUSES)) == PruneResult([], [])
    assert await store.prune(older_than=3600) == PruneResult([], [])
    assert await store.prune(sessions=["never-ran"]) == PruneResult(["never-ran"], [])
    assert await store.pending_signals("never-ran") == 0


async def test_a_journal_without_sessions_row_matches_age_and_id_never_status(
    store: JournalBackend,
) -> None:
    # Rows written through the plain JournalStore protocol: no claim, no sessions row.
    await store.put_step("bare", "a", 1)
    await store.put_stream("bare", "s", ["x"])
    assert await store.list_sessions(None) == []
    assert await store.prune(status="completed") == PruneResult([], [])
    assert await store.prune(older_than=3600) == PruneResult([], [])
    await anyio.sleep(0.05)
    assert await store.prune(older_than=0, dry_run=True) == PruneResult(["bare"], [])
    assert await store.prune(sessions=["bare"]) == PruneResult(["bare"], [])
    assert await store.get_step("bare", "a") is None
    assert await store.get_stream("bare", "s") is None


async def test_the_sessions_row_is_gone_and_the_session_starts_afresh(
    store: JournalBackend,
) -> None:
    assert await run(store, "s") == ["one", "two"]
    assert await run(store, "s") == []  # replayed
    assert await store.prune(sessions=["s"]) == PruneResult(["s"], [])
    assert await store.list_sessions(None) == []
    assert await store.load_session("s") == (await store.load_session("nobody"))
    assert await run(store, "s") == ["one", "two"]  # ran again: a fresh start
    [info] = await store.list_sessions(None)
    assert (info.status, info.steps) == ("completed", 2)


async def test_pruned_rows_are_gone_for_another_store_object(store_factory: StoreFactory) -> None:
    a = await store_factory.new()
    await run(a, "s")
    await run(a, "t")
    assert await a.prune(sessions=["s"]) == PruneResult(["s"], [])
    b = await store_factory.new()
    assert await session_ids(b) == ["t"]
    assert await rows(b, "s") == 0
    assert await rows(b, "t") == 2


async def test_prune_needs_a_filter(store: JournalBackend) -> None:
    await run(store, "a")
    with pytest.raises(ValueError, match="at least one filter"):
        await store.prune()
    with pytest.raises(ValueError, match="at least one filter"):
        await store.prune(dry_run=True)
    assert await session_ids(store) == ["a"]


async def test_prune_refuses_an_unknown_status(store: JournalBackend) -> None:
    with pytest.raises(ValueError, match=r"'done'.*'completed'.*'imported'"):
        await store.prune(status="done")
    with pytest.raises(ValueError, match="'finished'"):
        await store.prune(status=["completed", "finished"])


async def test_prune_refuses_a_negative_age(store: JournalBackend) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await store.prune(older_than=-1)


async def test_empty_filters_match_nothing(store: JournalBackend) -> None:
    await run(store, "a")
    assert await store.prune(sessions=[]) == PruneResult([], [])
    assert await store.prune(status=[]) == PruneResult([], [])
    assert await session_ids(store) == ["a"]


async def test_prune_results_are_sorted(store: JournalBackend) -> None:
    ids = ["s-9", "s-1", "s-5", "s-3"]
    for sid in ids:
        await run(store, sid)
    result = await store.prune(sessions=ids)
    assert result.pruned == sorted(ids)
    assert result.skipped == []


async def test_prune_on_a_closed_store_raises(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    await store.aclose()
    if store_factory.kind == "memory":
        store_factory._memory = None  # a closed memory store is not the journal any more
    with pytest.raises(StoreClosedError):
        await store.prune(sessions=["a"])


# -- Postgres: a claim racing with a prune -----------------------------------------------------


class HeldTransaction:
    """Runs ``sql`` in a transaction on a connection of its own (in a thread) and holds it open,
    with its locks, until ``commit()``."""

    def __init__(self, dsn: str, sql: str) -> None:
        self.ready = threading.Event()
        self._commit = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(dsn, sql))
        self._thread.start()

    def _main(self, dsn: str, sql: str) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    self.ready.set()
                    await asyncio.to_thread(self._commit.wait)
            finally:
                await conn.close()

        try:
            asyncio.run(go())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def commit(self) -> None:
        self._commit.set()
        await anyio.to_thread.run_sync(self._thread.join)
        assert self.error is None


async def _prune_while_held(
    store: PostgresJournalStore, held: HeldTransaction, **filters: Any
) -> PruneResult:
    await anyio.to_thread.run_sync(held.ready.wait)
    results: list[PruneResult] = []

    async def prune() -> None:
        results.append(await store.prune(**filters))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(prune)
            await anyio.sleep(0.5)
            assert results == [], "prune must wait for the claim's transaction"
            await held.commit()
    finally:
        await held.commit()
    return results[0]


@pytest.fixture
async def pg_store(pg_schema_dsn: str) -> Any:
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        await store.init_schema()
        yield store
    finally:
        await store.aclose()


LIVE_CLAIM = (
    "extract(epoch FROM clock_timestamp()) + 30, extract(epoch FROM clock_timestamp()), "
    "extract(epoch FROM clock_timestamp())"
)


@pytest.mark.postgres
async def test_postgres_a_claim_in_flight_on_a_sessions_row_wins_over_prune(
    pg_store: PostgresJournalStore, pg_schema_dsn: str
) -> None:
    await run(pg_store, "s")  # completed, not held: prunable until the claim commits
    held = HeldTransaction(
        pg_schema_dsn,
        "UPDATE jrt_sessions SET status = 'running', owner = 'other', "
        "lease_expires = extract(epoch FROM clock_timestamp()) + 30 WHERE session_id = 's'",
    )
    assert await _prune_while_held(pg_store, held, sessions=["s"]) == PruneResult([], ["s"])
    assert await rows(pg_store, "s") == 2


@pytest.mark.postgres
async def test_postgres_a_claim_in_flight_on_a_session_without_row_wins_over_prune(
    pg_store: PostgresJournalStore, pg_schema_dsn: str
) -> None:
    await pg_store.put_step("bare", "a", 1)  # journal rows, no sessions row
    held = HeldTransaction(
        pg_schema_dsn,
        "INSERT INTO jrt_sessions (session_id, status, owner, lease_expires, created_at, "
        f"updated_at) VALUES ('bare', 'running', 'other', {LIVE_CLAIM})",
    )
    assert await _prune_while_held(pg_store, held, sessions=["bare"]) == PruneResult([], ["bare"])
    assert await rows(pg_store, "bare") == 1
    [info] = await pg_store.list_sessions(None)
    assert (info.session_id, info.owner) == ("bare", "other")

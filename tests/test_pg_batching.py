"""Postgres: overlapping session opens and lazy releases share statements (``_backends/pgopen``),
and each caller gets exactly what a lone call would have given it -- a session held elsewhere is
refused, one opened twice at once is granted to both calls of its owner, a batched claim that
waited for a finishing owner still reads that owner's last steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from jeevesagent.runtime import PostgresJournalStore
from jeevesagent.runtime._backends.pgopen import open_many
from jeevesagent.runtime._journal.backend import OpenedSession
from jeevesagent.runtime._journal.rows import Record

from .conftest import pg
from .test_open_close import FINISHER, LATE_WRITER, open_while_a_commits


async def _store(dsn: str) -> PostgresJournalStore:
    store = await PostgresJournalStore.connect(dsn, min_size=1, max_size=3)
    await store.init_schema()
    return store


async def test_overlapping_opens_get_what_lone_opens_get(pg_schema_dsn: str) -> None:
    store = await _store(pg_schema_dsn)
    try:
        ids = [f"j{i:02d}" for i in range(30)]
        for n, sid in enumerate(ids):
            # Journals of 0..4 rows (a stream row among them), a signal for every third.
            records = [
                Record(sid, 0, f"s:{k}", bytes([k]) * 7, 1000.0 + k / 3) for k in range(n % 5)
            ]
            if n % 4 == 1:
                records.append(Record(sid, 1, "t:x", b"stream", 2000.5))
            await store.write_rows(records)
            if n % 3 == 0:
                await store.send_signal(sid, f"sig{n % 2}", b"payload", 10.0)
        held = await store.open_session("held", "other", 600.0)
        assert held.info.owner == "other"

        results: list[tuple[str, OpenedSession]] = []

        async def one(sid: str) -> None:
            results.append((sid, await store.open_session(sid, "me", 60.0)))

        async with anyio.create_task_group() as tg:
            for sid in [*ids, "held", "j00", "new", "j00"]:
                tg.start_soon(one, sid)
        assert store._opens.batches >= 1
        assert len(results) == len(ids) + 4

        for sid, opened in results:
            if sid == "held":
                assert opened.journal is None
                assert opened.info.owner == "other"
                continue
            assert opened.info.owner == "me", opened.info
            assert opened.info.status == "running"
            assert opened.journal is not None
            alone = await store.open_session(sid, "me", 60.0)  # no overlap: alone
            assert alone.journal is not None
            assert opened.journal.steps == alone.journal.steps, sid
            assert opened.journal.streams == alone.journal.streams, sid
            assert opened.pending == alone.pending, sid
            if sid != "new":
                n = ids.index(sid)
                assert len(opened.journal.steps) == n % 5
                assert opened.pending == ([f"sig{n % 2}"] if n % 3 == 0 else [])
        assert sum(1 for sid, _ in results if sid == "j00") == 3
    finally:
        await store.aclose()


async def test_overlapping_lazy_releases_release_what_their_owner_holds(
    pg_schema_dsn: str,
) -> None:
    store = await _store(pg_schema_dsn)
    try:
        ids = [f"r{i:02d}" for i in range(25)]
        for sid in ids:
            await store.open_session(sid, "me", 60.0)
        statuses = ("completed", "interrupted", "failed", "cancelled")
        async with anyio.create_task_group() as tg:
            for n, sid in enumerate(ids):
                owner = "me" if n != 7 else "not-me"  # not the owner: nothing changes
                tg.start_soon(store.release_lazy, sid, owner, statuses[n % 4], n)
        assert store._releases.batches >= 1
        for n, sid in enumerate(ids):
            info = await store.session_info(sid)
            assert info is not None
            if n == 7:
                assert (info.status, info.owner) == ("running", "me")
            else:
                assert (info.status, info.owner, info.steps) == (statuses[n % 4], None, n)
                assert info.lease_expires is None
    finally:
        await store.aclose()


async def test_a_batched_claim_after_waiting_for_a_finishing_owner_reads_the_whole_journal(
    pg_schema_dsn: str,
) -> None:
    """As test_open_close's test of the same name, for the batch statement: granted only with
    the finishing owner's last steps (else left out, and its caller opens alone)."""
    store = await _store(pg_schema_dsn)
    try:
        await store.open_session("s", "owner-a", 60.0)
        # The batch statement itself, on a connection of its own (in a thread).
        requests = {"s": ("owner-b", 60.0), "t": ("owner-b", 60.0)}
        opened = await open_while_a_commits(
            pg_schema_dsn, FINISHER, _open_many(pg_schema_dsn, requests)
        )
        assert "t" in opened
        if "s" in opened:
            journal = opened["s"].journal
            assert journal is not None
            assert "s:last" in journal.steps, sorted(journal.steps)
        # Its caller then opens alone, which sees the whole journal.
        alone = await store.open_session("s", "owner-b", 60.0)
        assert alone.info.owner == "owner-b"
        assert alone.journal is not None
        assert "s:last" in alone.journal.steps
    finally:
        await store.aclose()


def test_the_batcher_falls_back_to_lone_calls_and_never_stalls() -> None:
    """The batching itself (on an asyncio loop, as on the pool's loop): calls that overlap one
    in flight share one batch; a batch that fails with a driver error, or leaves a session out,
    has those callers call alone; a batch leader cancelled before its turn stalls nobody."""
    import asyncio

    import asyncpg

    from jeevesagent.runtime._backends.pgopen import Batcher

    log: list[object] = []
    fail = False

    async def one(pool: object, sid: str, args: int) -> str:
        log.append(("one", sid))
        await asyncio.sleep(0.01)
        return f"{sid}:{args}:one"

    async def many(pool: object, requests: dict[str, int]) -> dict[str, str]:
        log.append(("many", sorted(requests)))
        await asyncio.sleep(0.01)
        if fail:
            raise asyncpg.PostgresError("boom")
        return {sid: f"{sid}:{a}:many" for sid, a in requests.items() if sid != "left-out"}

    async def main() -> None:
        nonlocal fail
        b: Batcher[int, str] = Batcher(one, many)
        got = await asyncio.gather(*(b.call(None, sid, 1) for sid in ["a", "b", "c", "left-out"]))
        assert got == ["a:1:one", "b:1:many", "c:1:many", "left-out:1:one"]
        assert log == [("one", "a"), ("many", ["b", "c", "left-out"]), ("one", "left-out")]
        assert b.batches == 1
        log.clear()
        fail = True
        got = await asyncio.gather(*(b.call(None, sid, 2) for sid in ["a", "b", "c"]))
        assert got == ["a:2:one", "b:2:one", "c:2:one"]
        assert log[:2] == [("one", "a"), ("many", ["b", "c"])]
        fail = False
        # A leader cancelled while it waits for its turn: its follower calls alone, and the
        # batcher is free again afterwards.
        first = asyncio.ensure_future(b.call(None, "x", 3))
        await asyncio.sleep(0)
        leader = asyncio.ensure_future(b.call(None, "y", 3))
        follower = asyncio.ensure_future(b.call(None, "z", 3))
        await asyncio.sleep(0)
        leader.cancel()
        assert await first == "x:3:one"
        assert await follower == "z:3:one"
        assert leader.cancelled()
        assert await asyncio.wait_for(b.call(None, "w", 4), 5) == "w:4:one"

    asyncio.run(main())


async def test_a_batched_claim_taken_over_while_the_old_owner_writes_reads_its_last_row(
    pg_schema_dsn: str,
) -> None:
    """As test_open_close's takeover test, for the batch statement: a claim taken over from an
    owner whose lease ran out while it was recording a step includes that step."""
    store = await _store(pg_schema_dsn)
    try:
        await store.open_session("s", "owner-a", 60.0)
        await anyio.to_thread.run_sync(
            pg,
            pg_schema_dsn,
            lambda conn: conn.execute(
                "UPDATE jrt_sessions SET lease_expires = 0 WHERE session_id = 's'"
            ),
        )
        requests = {"s": ("owner-b", 60.0), "t": ("owner-b", 60.0)}
        opened = await open_while_a_commits(
            pg_schema_dsn, LATE_WRITER, _open_many(pg_schema_dsn, requests)
        )
        assert set(opened) == {"s", "t"}, opened
        journal = opened["s"].journal
        assert journal is not None
        assert "s:late" in journal.steps, sorted(journal.steps)
    finally:
        await store.aclose()


def _open_many(
    dsn: str, requests: dict[str, tuple[str, float]]
) -> Callable[[], Awaitable[dict[str, OpenedSession]]]:
    """The batch statement, run on a connection of its own (in a thread)."""

    async def go() -> dict[str, OpenedSession]:
        opened: dict[str, OpenedSession] = await anyio.to_thread.run_sync(
            pg, dsn, lambda conn: open_many(conn, requests)
        )
        return opened

    return go

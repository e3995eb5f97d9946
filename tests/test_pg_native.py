"""Postgres journal writes go over a libpq connection in the caller's own loop
(``_backends/pgnative``) -- under trio not through the asyncio thread that runs asyncpg -- and
they record, fence, report conflicts and fail exactly as the asyncpg writes do."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    PostgresRuntime,
    StoreError,
)
from jeevesagent.runtime._backends.pgnative import (
    NativeServerError,
    NativeWriter,
    libpq_conninfo,
)
from jeevesagent.runtime._journal.rows import Record

from .conftest import pg, with_search_path


# -- the DSN: what asyncpg sends as server settings, libpq gets as options ----------------------
def test_a_dsn_without_query_parameters_is_used_as_is() -> None:
    dsn = "postgresql://u:p@db.example:5433/app"
    assert libpq_conninfo(dsn) == dsn


def test_server_settings_in_the_dsn_become_libpq_options() -> None:
    got = libpq_conninfo(
        "postgresql://u@/app?host=/tmp/sock&search_path=my_schema&application_name=a b"
        "&sslmode=disable&database=other"
    )
    base, _, query = got.partition("?")
    assert base == "postgresql://u@/app"
    from urllib.parse import parse_qsl

    params = dict(parse_qsl(query))
    assert params == {
        "host": "/tmp/sock",
        "sslmode": "disable",
        "dbname": "other",  # asyncpg's alias
        "options": "-c search_path=my_schema -c application_name=a\\ b",
    }


def test_options_given_in_the_dsn_are_kept_before_the_settings() -> None:
    got = libpq_conninfo("postgresql:///app?options=-c%20work_mem%3D4MB&search_path=s")
    from urllib.parse import parse_qsl

    assert dict(parse_qsl(got.partition("?")[2])) == {"options": "-c work_mem=4MB -c search_path=s"}


# -- which path a store takes -------------------------------------------------------------------
_RAN: list[int] = []


def _times_ten(i: int) -> int:
    _RAN.append(i)
    return i * 10


@pytest.mark.parametrize("libpq_writes", [None, False])
async def test_writes_go_over_libpq_by_default_and_through_asyncpg_when_refused(
    pg_schema_dsn: str, libpq_writes: bool | None
) -> None:
    store = await PostgresJournalStore.connect(
        pg_schema_dsn, min_size=1, max_size=3, libpq_writes=libpq_writes
    )
    try:
        await store.init_schema()
        libpq = libpq_writes is None  # the default, on both loops
        assert ("writes=libpq" in repr(store)) is libpq
        rt = JournaledRuntime(store)
        async with rt.session("s"):
            await rt.step("warm", lambda: 0)
            # Count the calls that cross to asyncpg's loop while steps are recorded.
            bridge = store._bridge
            calls = 0
            run = bridge.run

            async def counting(fn: Any, *, shield: bool = False) -> Any:
                nonlocal calls
                calls += 1
                return await run(fn, shield=shield)

            bridge.run = counting  # type: ignore[method-assign]
            try:
                for i in range(5):
                    assert await rt.step(f"s{i}", _times_ten, i) == i * 10
            finally:
                del bridge.run
            assert calls == (0 if libpq else 5)
        await rt.aclose()
        # What the libpq writer wrote reads back through asyncpg.
        rt = JournaledRuntime(store)
        async with rt.session("s"):
            ran = len(_RAN)
            assert [await rt.step(f"s{i}", _times_ten, i) for i in range(5)] == [0, 10, 20, 30, 40]
            assert len(_RAN) == ran  # replayed, not run
        await rt.aclose()
    finally:
        await store.aclose()


async def test_libpq_writes_can_be_asked_for_or_refused(
    pg_schema_dsn: str, anyio_backend_name: str
) -> None:
    on = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2, libpq_writes=True)
    off = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2, libpq_writes=False)
    try:
        assert "writes=libpq" in repr(on)
        assert "writes=libpq" not in repr(off)
        await on.init_schema()
        await on.claim("s", "me", 60.0)
        await on.write_rows([Record("s", 0, "a", b"by libpq", 1.5)], {"s": "me"})
        await off.write_rows([Record("s", 0, "b", b"by asyncpg", 2.5)], {"s": "me"})
        journal = await off.load_session("s")
        assert {k: (r.data, r.created_at) for k, r in journal.steps.items()} == {
            "a": (b"by libpq", 1.5),
            "b": (b"by asyncpg", 2.5),
        }
    finally:
        await on.aclose()
        await off.aclose()
    assert on._native is not None
    assert not on._native.connected  # closed with the store
    # PostgresRuntime.connect passes the choice on.
    rt = await PostgresRuntime.connect(pg_schema_dsn, max_size=2, libpq_writes=True)
    try:
        assert "writes=libpq" in repr(rt._pg_store)
    finally:
        await rt.aclose()


# -- the same results as asyncpg's writes ---------------------------------------------------------
async def test_batches_conflicts_fences_and_stream_notices_over_libpq(
    pg_schema_dsn: str,
) -> None:
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2, libpq_writes=True)
    try:
        await store.init_schema()
        await store.claim("mine", "me", 60.0)
        await store.claim("theirs", "them", 60.0)
        # A batch with a key twice, across sessions, unfenced: first writer wins, both told.
        batch = [
            Record("mine", 0, "k", b"first", 1.0),
            Record("mine", 0, "k", b"second", 2.0),
            Record("other", 1, 't:"quoted\\key"', b"\x00\xff", 3.0),
        ]
        conflicts = await store.write_rows(batch)
        assert conflicts == {("mine", 0, "k"): (b"first", 1.0)}
        # One fenced row that conflicts: the kept row comes back.
        conflicts = await store.write_rows([Record("mine", 0, "k", b"late", 4.0)], {"mine": "me"})
        assert conflicts == {("mine", 0, "k"): (b"first", 1.0)}
        # Fenced out, alone and in a batch: SessionBusyError through the committer.
        from jeevesagent.runtime._journal.commit import Fenced

        with pytest.raises(Fenced):
            await store.write_rows([Record("theirs", 0, "x", b"no", 5.0)], {"theirs": "me"})
        with pytest.raises(Fenced):
            await store.write_rows(
                [Record("mine", 0, "y", b"yes", 5.0), Record("theirs", 0, "x", b"no", 5.0)],
                {"mine": "me", "theirs": "me"},
            )
        assert "x" not in (await store.load_session("theirs")).steps
        assert "y" not in (await store.load_session("mine")).steps  # all or nothing
        # A stream row wakes the session's stream readers once committed.
        woken = anyio.Event()
        assert await store.watch_streams(lambda sid: woken.set() if sid == "mine" else None)
        await store.write_rows([Record("mine", 1, "t:s", b"chunks", 6.0)], {"mine": "me"})
        with anyio.fail_after(10):
            await woken.wait()
        journal = await store.load_session("other")
        assert journal.streams['t:"quoted\\key"'].data == b"\x00\xff"
    finally:
        await store.aclose()


async def test_a_missing_table_is_reported_with_what_to_do(pg_dsn: str) -> None:
    # A schema without the journal's tables.
    store = await PostgresJournalStore.connect(
        with_search_path(pg_dsn, "pg_temp"), max_size=2, libpq_writes=True
    )
    try:
        with pytest.raises(StoreError) as caught:
            await store.write_rows([Record("s", 0, "s:step", b"v", 1.0)])
        message = str(caught.value)
        assert "init_schema()" in message, message
        assert "session 's'" in message, message
        assert isinstance(caught.value.__cause__, NativeServerError)
        assert caught.value.__cause__.sqlstate == "42P01"
    finally:
        await store.aclose()


async def test_a_writer_connection_ended_by_the_server_is_replaced(pg_schema_dsn: str) -> None:
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2, libpq_writes=True)
    try:
        await store.init_schema()
        await store.write_rows([Record("s", 0, "one", b"1", 1.0)])
        native = store._native
        assert native is not None
        pid = native._pg.backend_pid

        # While idle: the next write notices before sending, and reconnects.
        async def kill(conn: Any) -> Any:
            return await conn.fetchval("SELECT pg_terminate_backend($1)", pid)

        assert pg(pg_schema_dsn, kill)
        await anyio.sleep(0.2)  # the server's message and the end of the stream arrive
        await store.write_rows([Record("s", 0, "two", b"2", 2.0)])
        assert native._pg.backend_pid != pid
        steps = (await store.load_session("s")).steps
        assert sorted(steps) == ["one", "two"]
    finally:
        await store.aclose()


async def test_a_statement_the_server_refuses_leaves_the_connection_usable(
    pg_dsn: str,
) -> None:
    writer = NativeWriter(libpq_conninfo(pg_dsn))
    try:
        with pytest.raises(NativeServerError) as caught:
            await writer.execute("SELECT 1/0")
        assert caught.value.sqlstate == "22012"
        row = await writer.fetchrow(
            "SELECT true, $1::int2, $2::int4, $3::int8, $4::float8, $5::text, $6::bytea,"
            " NULL::text, pg_notify('jrt_test', 'x'), array_to_string($7::text[], '|')",
            -3,
            70000,
            2**40,
            0.1,
            'é"\\',
            b"\x00\x01",
            ['a"b', "c\\d", ""],
        )
        assert row == (True, -3, 70000, 2**40, 0.1, 'é"\\', b"\x00\x01", None, None, 'a"b|c\\d|')
        with pytest.raises(TypeError):
            await writer.execute("SELECT $1", object())
        assert await writer.execute("SELECT 1") == "SELECT 1"
    finally:
        writer.close()


async def test_the_writer_refuses_a_second_call_at_the_same_time(pg_dsn: str) -> None:
    writer = NativeWriter(libpq_conninfo(pg_dsn))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.execute, "SELECT pg_sleep(0.2)")
            await anyio.sleep(0.05)
            with pytest.raises(RuntimeError, match="one at a time"):
                await writer.execute("SELECT 1")
        assert await writer.execute("SELECT 1") == "SELECT 1"  # the first call was unharmed
    finally:
        writer.close()

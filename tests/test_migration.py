"""Schema versions and the migration from jeevesagent 0.9.7, on SQLite and Postgres.

0.9.7 kept two tables, ``journal_steps`` and ``journal_streams``, keyed by (session id, step name)
with pickled values. Opening a SQLite file (or ``init_schema()`` / ``schema_sql()`` on Postgres)
copies their rows into ``jrt_journal`` under ``l:<step name>`` keys, byte for byte, gives each
imported session an ``imported`` sessions row, and leaves the old tables as they were.
"""

from __future__ import annotations

import dataclasses
import pickle
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest

from jeevesagent.runtime import (
    JournalCorruptError,
    PostgresJournalStore,
    PostgresRuntime,
    SqliteJournalStore,
    SqliteRuntime,
)
from jeevesagent.runtime._backends.pgschema import _PG_MIGRATIONS
from jeevesagent.runtime._backends.sqlite import _MIGRATIONS
from jeevesagent.runtime._journal.backend import SESSION_STATUSES, JournalBackend, SessionInfo

from .conftest import _run_sql, pg


class Invoice(pydantic.BaseModel):
    id: str
    total: float


@dataclasses.dataclass
class Shipment:
    carrier: str
    parcels: int


T0 = 1_700_000_000.25
# (session id, step name, value, created_at), as 0.9.7 recorded them.
LEGACY_STEPS: list[tuple[str, str, Any, float]] = [
    ("order-1", "fetch", {"x": 1, "items": [1, 2]}, T0 + 1),
    ("order-1", "nothing", None, T0 + 2),
    ("order-1", "invoice", Invoice(id="inv-1", total=12.5), T0 + 3),
    ("order-1", "ship", Shipment("DHL", 3), T0 + 4),
    ("order-2", "fetch", 42, T0 + 10),
]
LEGACY_STREAMS: list[tuple[str, str, list[Any], float]] = [
    ("order-1", "llm", ["Hel", "lo", "!"], T0 + 5),
    ("order-3", "tokens", ["a", "b"], T0 + 20),  # a session with a stream only
]
# session id -> (created_at = oldest row, updated_at = newest row, rows)
LEGACY_SESSIONS = {
    "order-1": (T0 + 1, T0 + 5, 5),
    "order-2": (T0 + 10, T0 + 10, 1),
    "order-3": (T0 + 20, T0 + 20, 1),
}

SQLITE_097_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS journal_steps (
    session_id TEXT NOT NULL,
    step_name  TEXT NOT NULL,
    value      BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, step_name)
)""",
    """CREATE TABLE IF NOT EXISTS journal_streams (
    session_id TEXT NOT NULL,
    step_name  TEXT NOT NULL,
    chunks     BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, step_name)
)""",
]
PG_097_SCHEMA = [
    s.replace("BLOB", "BYTEA").replace("REAL", "DOUBLE PRECISION") for s in SQLITE_097_SCHEMA
]
# (session id, kind, key, bytes, created_at) that the import must produce.
EXPECTED_ROWS = sorted(
    [(sid, 0, f"l:{name}", pickle.dumps(value), at) for sid, name, value, at in LEGACY_STEPS]
    + [(sid, 1, f"l:{name}", pickle.dumps(chunks), at) for sid, name, chunks, at in LEGACY_STREAMS]
)
OLD_STEPS = "SELECT session_id, step_name, value, created_at FROM journal_steps ORDER BY 1, 2"
OLD_STREAMS = "SELECT session_id, step_name, chunks, created_at FROM journal_streams ORDER BY 1, 2"
JOURNAL = "SELECT session_id, kind, key, value, created_at FROM jrt_journal ORDER BY 1, 2, 3"
VERSIONS = "SELECT version FROM jrt_schema_version ORDER BY version"
# Every version a new or migrated journal records (4: workflows, see test_migration_workflows).
ALL_VERSIONS = [(1,), (2,), (3,), (4,), (5,)]


def _legacy_params() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    steps = [(sid, name, pickle.dumps(value), at) for sid, name, value, at in LEGACY_STEPS]
    streams = [(sid, name, pickle.dumps(chunks), at) for sid, name, chunks, at in LEGACY_STREAMS]
    return steps, streams


# -- SQLite helpers -------------------------------------------------------------------------------


def write_097_sqlite(path: Path) -> None:
    """Write a journal exactly as jeevesagent 0.9.7 left it."""
    steps, streams = _legacy_params()
    conn = sqlite3.connect(path)
    try:
        for ddl in SQLITE_097_SCHEMA:
            conn.execute(ddl)
        conn.executemany("INSERT INTO journal_steps VALUES (?, ?, ?, ?)", steps)
        conn.executemany("INSERT INTO journal_streams VALUES (?, ?, ?, ?)", streams)
        conn.commit()
    finally:
        conn.close()


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


@pytest.fixture
def legacy_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "journal.sqlite3"
    write_097_sqlite(path)
    return path


async def open_sqlite(path: Path) -> SqliteJournalStore:
    store = SqliteJournalStore(path)
    await store.list_sessions(None)  # the first call opens the file (and migrates it)
    return store


# -- Postgres helpers -----------------------------------------------------------------------------


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    async def fetch(conn: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.fetch(sql)]

    rows: list[tuple[Any, ...]] = pg(dsn, fetch)
    return rows


def write_097_pg(dsn: str) -> None:
    steps, streams = _legacy_params()

    async def write(conn: Any) -> None:
        for ddl in PG_097_SCHEMA:
            await conn.execute(ddl)
        await conn.executemany("INSERT INTO journal_steps VALUES ($1, $2, $3, $4)", steps)
        await conn.executemany("INSERT INTO journal_streams VALUES ($1, $2, $3, $4)", streams)

    pg(dsn, write)


def apply_schema_sql(dsn: str) -> None:
    """What a user's migration tool does with schema_sql(): run each statement in order."""
    for statement in PostgresJournalStore.schema_sql():
        _run_sql(dsn, statement)


@pytest.fixture
def legacy_pg(pg_schema_dsn: str) -> str:
    write_097_pg(pg_schema_dsn)
    return pg_schema_dsn


async def open_pg(dsn: str) -> PostgresJournalStore:
    store = await PostgresJournalStore.connect(dsn, max_size=2)
    try:
        await store.init_schema()
    except BaseException:
        await store.aclose()
        raise
    return store


# -- shared checks --------------------------------------------------------------------------------


async def assert_imported_sessions(store: JournalBackend) -> None:
    imported = await store.list_sessions("imported")
    assert {i.session_id: i for i in imported} == {
        sid: SessionInfo(sid, "imported", None, None, created, updated, n)
        for sid, (created, updated, n) in LEGACY_SESSIONS.items()
    }


def test_imported_is_a_session_status() -> None:
    assert "imported" in SESSION_STATUSES


# -- SQLite ---------------------------------------------------------------------------------------


async def test_sqlite_imports_a_097_journal_byte_for_byte(legacy_sqlite: Path) -> None:
    old = sqlite_rows(legacy_sqlite, OLD_STEPS), sqlite_rows(legacy_sqlite, OLD_STREAMS)
    store = await open_sqlite(legacy_sqlite)
    try:
        await assert_imported_sessions(store)
        journal = await store.load_session("order-1")
        assert journal.steps["l:nothing"].data == pickle.dumps(None)
    finally:
        await store.aclose()
    assert sqlite_rows(legacy_sqlite, JOURNAL) == EXPECTED_ROWS
    assert sqlite_rows(legacy_sqlite, VERSIONS) == ALL_VERSIONS
    # The 0.9.7 tables are left exactly as they were.
    assert (sqlite_rows(legacy_sqlite, OLD_STEPS), sqlite_rows(legacy_sqlite, OLD_STREAMS)) == old


async def test_sqlite_reopening_a_migrated_journal_changes_nothing(legacy_sqlite: Path) -> None:
    for _ in range(3):
        store = await open_sqlite(legacy_sqlite)
        await store.aclose()
    assert sqlite_rows(legacy_sqlite, JOURNAL) == EXPECTED_ROWS
    assert sqlite_rows(legacy_sqlite, VERSIONS) == ALL_VERSIONS
    assert len(sqlite_rows(legacy_sqlite, "SELECT * FROM jrt_sessions")) == len(LEGACY_SESSIONS)


async def test_sqlite_fresh_file_has_every_version_and_no_legacy_tables(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    store = await open_sqlite(path)
    await store.aclose()
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS
    tables = {r[0] for r in sqlite_rows(path, "SELECT name FROM sqlite_master")}
    assert "journal_steps" not in tables
    assert sqlite_rows(path, "SELECT count(*) FROM jrt_sessions") == [(0,)]


async def test_sqlite_version_2_journal_imports_and_keeps_existing_session_rows(
    legacy_sqlite: Path,
) -> None:
    # A journal of the unreleased version 2 that also has 0.9.7 tables (and a sessions row).
    conn = sqlite3.connect(legacy_sqlite)
    conn.execute("CREATE TABLE jrt_schema_version (version INTEGER NOT NULL)")
    for migration in _MIGRATIONS[:2]:
        for ddl in migration:
            assert isinstance(ddl, str)
            conn.execute(ddl)
    conn.executemany("INSERT INTO jrt_schema_version VALUES (?)", [(1,), (2,)])
    conn.execute(
        "INSERT INTO jrt_sessions VALUES ('order-2', 'completed', NULL, NULL, 1.0, 2.0, 9)"
    )
    conn.commit()
    conn.close()
    store = await open_sqlite(legacy_sqlite)
    try:
        [kept] = await store.list_sessions("completed")
        assert kept == SessionInfo("order-2", "completed", None, None, 1.0, 2.0, 9)
        imported = {i.session_id for i in await store.list_sessions("imported")}
        assert imported == {"order-1", "order-3"}
    finally:
        await store.aclose()
    assert sqlite_rows(legacy_sqlite, JOURNAL) == EXPECTED_ROWS
    assert sqlite_rows(legacy_sqlite, VERSIONS) == ALL_VERSIONS


async def test_sqlite_two_stores_opening_one_097_file_at_once_migrate_it_once(
    tmp_path: Path,
) -> None:
    for i in range(5):
        path = tmp_path / f"j{i}.sqlite3"
        write_097_sqlite(path)
        # Each store opens its file on a thread of its own: both threads migrate concurrently.
        a, b = SqliteJournalStore(path), SqliteJournalStore(path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.list_sessions, None)
                tg.start_soon(b.list_sessions, None)
        finally:
            await a.aclose()
            await b.aclose()
        assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS
        assert sqlite_rows(path, JOURNAL) == EXPECTED_ROWS
        assert len(sqlite_rows(path, "SELECT * FROM jrt_sessions")) == len(LEGACY_SESSIONS)


async def test_sqlite_journal_of_a_newer_version_is_refused(legacy_sqlite: Path) -> None:
    store = await open_sqlite(legacy_sqlite)
    await store.aclose()
    conn = sqlite3.connect(legacy_sqlite)
    conn.execute("INSERT INTO jrt_schema_version VALUES (99)")
    conn.commit()
    conn.close()
    store = SqliteJournalStore(legacy_sqlite)
    try:
        with pytest.raises(JournalCorruptError, match=r"version 99, newer .* upgrade"):
            await store.load_session("order-1")
    finally:
        await store.aclose()


async def test_sqlite_an_imported_session_can_be_claimed(legacy_sqlite: Path) -> None:
    store = await open_sqlite(legacy_sqlite)
    try:
        info = await store.claim("order-1", "owner-a", 30)
        assert (info.owner, info.status) == ("owner-a", "running")
        await store.release("order-1", "owner-a", "completed", 6)
        [done] = await store.list_sessions("completed")
        assert (done.session_id, done.steps) == ("order-1", 6)
    finally:
        await store.aclose()


# -- Postgres -------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_imports_a_097_journal_byte_for_byte(legacy_pg: str) -> None:
    old = pg_rows(legacy_pg, OLD_STEPS), pg_rows(legacy_pg, OLD_STREAMS)
    store = await open_pg(legacy_pg)
    try:
        await assert_imported_sessions(store)
    finally:
        await store.aclose()
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS
    assert pg_rows(legacy_pg, VERSIONS) == ALL_VERSIONS
    assert (pg_rows(legacy_pg, OLD_STEPS), pg_rows(legacy_pg, OLD_STREAMS)) == old


@pytest.mark.postgres
async def test_postgres_init_schema_again_changes_nothing(legacy_pg: str) -> None:
    store = await open_pg(legacy_pg)
    try:
        await store.init_schema()
        await store.init_schema()
        await assert_imported_sessions(store)
    finally:
        await store.aclose()
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS
    assert pg_rows(legacy_pg, VERSIONS) == ALL_VERSIONS


@pytest.mark.postgres
async def test_postgres_concurrent_init_schema_migrates_once(legacy_pg: str) -> None:
    a = await PostgresJournalStore.connect(legacy_pg, max_size=2)
    b = await PostgresJournalStore.connect(legacy_pg, max_size=2)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.init_schema)
            tg.start_soon(b.init_schema)
        await assert_imported_sessions(a)
    finally:
        await a.aclose()
        await b.aclose()
    assert pg_rows(legacy_pg, VERSIONS) == ALL_VERSIONS
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS


@pytest.mark.postgres
async def test_postgres_concurrent_init_schema_on_an_empty_schema(pg_schema_dsn: str) -> None:
    stores = [await PostgresJournalStore.connect(pg_schema_dsn, max_size=2) for _ in range(3)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.init_schema)
    finally:
        for store in stores:
            await store.aclose()
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS
    assert pg_rows(pg_schema_dsn, "SELECT to_regclass('journal_steps')::text") == [(None,)]


@pytest.mark.postgres
def test_postgres_schema_sql_imports_once_even_when_applied_again(legacy_pg: str) -> None:
    apply_schema_sql(legacy_pg)
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS
    # After a session is deleted, applying the statements again must not bring it back.
    _run_sql(legacy_pg, "DELETE FROM jrt_journal WHERE session_id = 'order-2'")
    _run_sql(legacy_pg, "DELETE FROM jrt_sessions WHERE session_id = 'order-2'")
    apply_schema_sql(legacy_pg)
    assert pg_rows(legacy_pg, JOURNAL) == [r for r in EXPECTED_ROWS if r[0] != "order-2"]
    assert pg_rows(legacy_pg, VERSIONS) == ALL_VERSIONS
    sessions = pg_rows(legacy_pg, "SELECT session_id, status FROM jrt_sessions ORDER BY 1")
    assert sessions == [("order-1", "imported"), ("order-3", "imported")]


@pytest.mark.postgres
def test_postgres_schema_sql_on_an_empty_schema_is_harmless_twice(pg_schema_dsn: str) -> None:
    for _ in range(2):
        apply_schema_sql(pg_schema_dsn)
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS


@pytest.mark.postgres
async def test_postgres_version_2_database_is_migrated_and_keeps_its_sessions(
    legacy_pg: str,
) -> None:
    for statement in [s for migration in _PG_MIGRATIONS[:2] for s in migration]:
        _run_sql(legacy_pg, statement)
    # The single-row bookkeeping of the version-2 schema_sql().
    _run_sql(legacy_pg, "CREATE TABLE jrt_schema_version (version integer NOT NULL)")
    _run_sql(legacy_pg, "INSERT INTO jrt_schema_version VALUES (2)")
    _run_sql(
        legacy_pg,
        "INSERT INTO jrt_sessions VALUES ('order-2', 'completed', NULL, NULL, 1.0, 2.0, 9)",
    )
    store = await open_pg(legacy_pg)
    try:
        [kept] = await store.list_sessions("completed")
        assert kept == SessionInfo("order-2", "completed", None, None, 1.0, 2.0, 9)
        imported = {i.session_id for i in await store.list_sessions("imported")}
        assert imported == {"order-1", "order-3"}
    finally:
        await store.aclose()
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS
    assert pg_rows(legacy_pg, VERSIONS) == [(2,), (3,), (4,), (5,)]


@pytest.mark.postgres
async def test_postgres_database_of_a_newer_version_is_refused(legacy_pg: str) -> None:
    store = await open_pg(legacy_pg)
    try:
        _run_sql(legacy_pg, "INSERT INTO jrt_schema_version VALUES (99)")
        with pytest.raises(JournalCorruptError, match=r"version 99, newer .* upgrade"):
            await store.init_schema()
    finally:
        await store.aclose()
    with pytest.raises(Exception, match=r"version 99, newer"):
        apply_schema_sql(legacy_pg)
    assert pg_rows(legacy_pg, JOURNAL) == EXPECTED_ROWS


@pytest.mark.postgres
async def test_postgres_an_imported_session_can_be_claimed(legacy_pg: str) -> None:
    store = await open_pg(legacy_pg)
    try:
        info = await store.claim("order-3", "owner-a", 30)
        assert (info.owner, info.status) == ("owner-a", "running")
    finally:
        await store.aclose()


# -- replaying a 0.9.7 journal with the runtime (needs the runtime's "l:" fallback) -------------


async def _replay_097(rt: Any) -> None:
    calls: list[str] = []

    def ran(name: str) -> Callable[[], Any]:
        def fn() -> Any:
            calls.append(name)
            return f"fresh {name}"

        return fn

    async def tokens() -> AsyncIterator[str]:
        calls.append("llm")
        yield "fresh"

    async with rt.session("order-1"):
        assert await rt.step("fetch", ran("fetch")) == {"x": 1, "items": [1, 2]}
        assert await rt.step("nothing", ran("nothing")) is None
        assert await rt.step("invoice", ran("invoice")) == Invoice(id="inv-1", total=12.5)
        assert await rt.step("ship", ran("ship")) == Shipment("DHL", 3)
        assert [c async for c in rt.stream_step("llm", tokens)] == ["Hel", "lo", "!"]
        # A step 0.9.7 never recorded runs.
        assert await rt.step("new", ran("new")) == "fresh new"
    async with rt.session("order-2"):
        assert await rt.step("fetch", ran("fetch")) == 42
    assert calls == ["new"]


async def test_sqlite_runtime_replays_a_097_journal_without_running_steps(
    legacy_sqlite: Path,
) -> None:
    async with SqliteRuntime(legacy_sqlite) as rt:
        await _replay_097(rt)


@pytest.mark.postgres
async def test_postgres_runtime_replays_a_097_journal_without_running_steps(
    legacy_pg: str,
) -> None:
    rt = await PostgresRuntime.connect(legacy_pg, max_size=2)
    try:
        await rt.init_schema()
        await _replay_097(rt)
    finally:
        await rt.aclose()

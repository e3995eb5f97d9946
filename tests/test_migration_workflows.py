"""Schema version 4 (workflows): a journal at version 3, as the previous release left it, gets the
sessions table's ``workflow`` and ``cancel_requested`` columns and the workers' index when it is
opened (SQLite) or migrated (Postgres ``init_schema()`` and ``schema_sql()``), and keeps its
rows, which read as plain sessions (no workflow, no cancel request) and work as before.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from jeevesagent.runtime import PostgresJournalStore, SqliteJournalStore
from jeevesagent.runtime._backends.pgschema import _PG_MIGRATIONS
from jeevesagent.runtime._backends.sqlite import _MIGRATIONS
from jeevesagent.runtime._journal.backend import JournalBackend, Record, SessionInfo

from .conftest import _run_sql
from .test_migration import (
    ALL_VERSIONS,
    JOURNAL,
    VERSIONS,
    apply_schema_sql,
    open_pg,
    open_sqlite,
    pg_rows,
    sqlite_rows,
)

# Rows of a version-3 journal: a session that ended, one held by a (dead) runtime, its step.
V3_SESSIONS = [
    ("done", "completed", None, None, 1.0, 2.0, 4),
    ("held", "running", "owner-x", 5.0, 3.0, 4.0, 1),
]
V3_JOURNAL = [("done", 0, "s:step:0123", b"value", 1.5)]
EXPECTED = [SessionInfo(*row) for row in V3_SESSIONS]  # workflow None, cancel_requested False
INDEX = "jrt_sessions_work"


async def check_migrated(store: JournalBackend) -> None:
    """The old rows read as plain sessions; the new columns and statuses work on them."""
    assert await store.list_sessions() == EXPECTED
    assert await store.session_info("held") == EXPECTED[1]
    assert await store.list_sessions(workflows=["w"]) == []
    now = time.time()
    info, row = await store.create_session("new", "w", Record("new", 0, "w:args", b"a", now))
    assert (info.status, info.workflow, row) == ("pending", "w", (b"a", now))
    cancelled = await store.request_cancel("held")  # its lease ran out long ago
    assert cancelled is not None
    assert (cancelled.status, cancelled.owner, cancelled.cancel_requested) == (
        "cancelled",
        None,
        True,
    )
    assert [i.session_id for i in await store.list_sessions(workflows=["w"])] == ["new"]


# -- SQLite ---------------------------------------------------------------------------------------


def write_v3_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE jrt_schema_version (version INTEGER NOT NULL)")
        for version, migration in enumerate(_MIGRATIONS[:3], 1):
            for step in migration:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
            conn.execute("INSERT INTO jrt_schema_version VALUES (?)", (version,))
        conn.executemany("INSERT INTO jrt_sessions VALUES (?, ?, ?, ?, ?, ?, ?)", V3_SESSIONS)
        conn.executemany("INSERT INTO jrt_journal VALUES (?, ?, ?, ?, ?)", V3_JOURNAL)
        conn.commit()
    finally:
        conn.close()


async def test_sqlite_version_3_journal_gets_the_workflow_columns(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    write_v3_sqlite(path)
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS[:3]
    store = await open_sqlite(path)
    try:
        await check_migrated(store)
    finally:
        await store.aclose()
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS
    columns = [r[1] for r in sqlite_rows(path, "PRAGMA table_info(jrt_sessions)")]
    assert columns[-4:-2] == ["workflow", "cancel_requested"]
    indexes = {r[0] for r in sqlite_rows(path, "SELECT name FROM sqlite_master")}
    assert INDEX in indexes
    assert sqlite_rows(path, JOURNAL)[0] == V3_JOURNAL[0]
    # Opening it again changes nothing.
    store = await open_sqlite(path)
    await store.aclose()
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS


async def test_sqlite_pending_poll_uses_the_index(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    store = SqliteJournalStore(path)
    await store.list_sessions()
    await store.aclose()
    plan = sqlite_rows(
        path,
        "EXPLAIN QUERY PLAN SELECT session_id FROM jrt_sessions "
        "WHERE status = 'pending' AND workflow IN ('a', 'b') ORDER BY created_at LIMIT 10",
    )
    assert any(INDEX in str(row[-1]) for row in plan), plan


# -- Postgres -------------------------------------------------------------------------------------


def write_v3_pg(dsn: str) -> None:
    _run_sql(dsn, "CREATE TABLE jrt_schema_version (version integer NOT NULL)")
    for version, migration in enumerate(_PG_MIGRATIONS[:3], 1):
        for statement in migration:
            _run_sql(dsn, statement)
        _run_sql(dsn, "INSERT INTO jrt_schema_version VALUES ($1)", version)
    for row in V3_SESSIONS:
        _run_sql(dsn, "INSERT INTO jrt_sessions VALUES ($1, $2, $3, $4, $5, $6, $7)", *row)
    for row in V3_JOURNAL:
        _run_sql(dsn, "INSERT INTO jrt_journal VALUES ($1, $2, $3, $4, $5)", *row)


def pg_columns(dsn: str) -> list[tuple[str, str, str]]:
    sql = (
        "SELECT column_name::text, data_type::text, is_nullable::text"
        " FROM information_schema.columns"
        " WHERE table_name = 'jrt_sessions' AND table_schema = current_schema()"
        " ORDER BY ordinal_position"
    )
    return [(str(a), str(b), str(c)) for a, b, c in pg_rows(dsn, sql)]


@pytest.mark.postgres
async def test_postgres_version_3_database_gets_the_workflow_columns(pg_schema_dsn: str) -> None:
    write_v3_pg(pg_schema_dsn)
    store = await open_pg(pg_schema_dsn)
    try:
        await check_migrated(store)
        await store.init_schema()  # again: nothing to do
    finally:
        await store.aclose()
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS
    assert pg_columns(pg_schema_dsn)[-4:-2] == [
        ("workflow", "text", "YES"),
        ("cancel_requested", "boolean", "NO"),
    ]
    indexes = pg_rows(pg_schema_dsn, "SELECT indexname::text FROM pg_indexes")
    assert (INDEX,) in indexes


@pytest.mark.postgres
async def test_postgres_schema_sql_migrates_a_version_3_database(pg_schema_dsn: str) -> None:
    write_v3_pg(pg_schema_dsn)
    apply_schema_sql(pg_schema_dsn)
    apply_schema_sql(pg_schema_dsn)  # idempotent
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        await check_migrated(store)
    finally:
        await store.aclose()

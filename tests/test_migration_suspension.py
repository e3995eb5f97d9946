"""Schema version 5 (suspension): a journal at version 4, as the workflows release left it, gets
the sessions table's ``waiting_for`` and ``wake_at`` columns and their index when it is opened
(SQLite) or migrated (Postgres ``init_schema()`` and ``schema_sql()``), keeps its rows, and a
session of it can be suspended and found again by a worker.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from jeevesagent.runtime import PostgresJournalStore
from jeevesagent.runtime._backends.pgschema import _PG_MIGRATIONS
from jeevesagent.runtime._backends.sqlite import _MIGRATIONS
from jeevesagent.runtime._journal.backend import JournalBackend, SessionInfo

from .conftest import _run_sql
from .test_migration import (
    ALL_VERSIONS,
    VERSIONS,
    apply_schema_sql,
    open_pg,
    open_sqlite,
    pg_rows,
    sqlite_rows,
)

# Rows of a version-4 journal: an ended workflow session, and one held by a (dead) runtime.
V4_SESSIONS = [
    ("done", "completed", None, None, 1.0, 2.0, 4, "w", False),
    ("held", "running", "owner-x", 5.0, 3.0, 4.0, 1, "w", False),
]
EXPECTED = [SessionInfo(*row) for row in V4_SESSIONS]  # waiting_for and wake_at None
INDEX = "jrt_sessions_wake"


async def check_migrated(store: JournalBackend) -> None:
    assert await store.list_sessions() == EXPECTED
    assert await store.resumable(["w"]) == []
    assert await store.wake_in(["w"]) is None
    claimed = await store.claim("held", "me", 30.0)  # its lease ran out long ago
    assert claimed.owner == "me"
    wake = time.time() - 1.0
    after = await store.suspend("held", "me", "approve", wake, 3)
    assert after is not None
    assert (after.status, after.owner, after.waiting_for, after.wake_at) == (
        "waiting",
        None,
        "approve",
        wake,
    )
    assert [i.session_id for i in await store.resumable(["w"])] == ["held"]


def write_v4_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE jrt_schema_version (version INTEGER NOT NULL)")
        for version, migration in enumerate(_MIGRATIONS[:4], 1):
            for step in migration:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
            conn.execute("INSERT INTO jrt_schema_version VALUES (?)", (version,))
        conn.executemany("INSERT INTO jrt_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", V4_SESSIONS)
        conn.commit()
    finally:
        conn.close()


async def test_sqlite_version_4_journal_gets_the_suspension_columns(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite3"
    write_v4_sqlite(path)
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS[:4]
    store = await open_sqlite(path)
    try:
        await check_migrated(store)
    finally:
        await store.aclose()
    assert sqlite_rows(path, VERSIONS) == ALL_VERSIONS
    columns = [r[1] for r in sqlite_rows(path, "PRAGMA table_info(jrt_sessions)")]
    assert columns[-2:] == ["waiting_for", "wake_at"]
    assert INDEX in {r[0] for r in sqlite_rows(path, "SELECT name FROM sqlite_master")}


def write_v4_pg(dsn: str) -> None:
    _run_sql(dsn, "CREATE TABLE jrt_schema_version (version integer NOT NULL)")
    for version, migration in enumerate(_PG_MIGRATIONS[:4], 1):
        for statement in migration:
            _run_sql(dsn, statement)
        _run_sql(dsn, "INSERT INTO jrt_schema_version VALUES ($1)", version)
    for row in V4_SESSIONS:
        _run_sql(dsn, "INSERT INTO jrt_sessions VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", *row)


@pytest.mark.postgres
async def test_postgres_version_4_database_gets_the_suspension_columns(pg_schema_dsn: str) -> None:
    write_v4_pg(pg_schema_dsn)
    store = await open_pg(pg_schema_dsn)
    try:
        await check_migrated(store)
        await store.init_schema()  # again: nothing to do
    finally:
        await store.aclose()
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS
    indexes = pg_rows(pg_schema_dsn, "SELECT indexname::text FROM pg_indexes")
    assert (INDEX,) in indexes


@pytest.mark.postgres
async def test_postgres_schema_sql_migrates_a_version_4_database(pg_schema_dsn: str) -> None:
    write_v4_pg(pg_schema_dsn)
    apply_schema_sql(pg_schema_dsn)
    apply_schema_sql(pg_schema_dsn)  # idempotent
    assert pg_rows(pg_schema_dsn, VERSIONS) == ALL_VERSIONS
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        await check_migrated(store)
    finally:
        await store.aclose()

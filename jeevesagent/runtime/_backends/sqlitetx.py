"""The SQLite store's statement helpers, shared by its modules: a one-row read that finalizes its
statement, a write transaction that takes the write lock up front, and the journal row's insert
(first writer wins) and read.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._journal.rows import Row

__all__ = ["INSERT", "SELECT_ONE", "get_row", "one", "write"]

INSERT = "INSERT OR IGNORE INTO jrt_journal VALUES (?, ?, ?, ?, ?)"
SELECT_ONE = (
    "SELECT value, created_at FROM jrt_journal WHERE session_id = ? AND kind = ? AND key = ?"
)


def one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
    """Fetch one row and finalize the statement at once: a statement left open keeps its read
    snapshot, and a later write from that snapshot fails with SQLITE_BUSY_SNAPSHOT immediately,
    without waiting on the busy timeout."""
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchone()
    finally:
        cursor.close()


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taking the write lock up front."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def get_row(conn: sqlite3.Connection, session_id: str, kind: int, key: str) -> Row | None:
    row = one(conn, SELECT_ONE, (session_id, kind, key))
    return None if row is None else Row(row[0], row[1])

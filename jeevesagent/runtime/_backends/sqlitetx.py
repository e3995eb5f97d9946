"""The SQLite store's statement helpers, shared by its modules: a one-row read that finalizes its
statement, a write transaction that takes the write lock up front (or, inside a batch of writes
sharing one transaction, a savepoint of it), the batch runner itself, the journal rows' insert
(first writer wins) and read, and the fence of a write (the claims it is made under).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from .._journal.rows import Row
from .._journal.rules import check_fence
from .thread import BatchJob

__all__ = ["INSERT", "SELECT_ONE", "fence", "get_row", "insert_rows", "one", "write", "write_batch"]

INSERT = "INSERT OR IGNORE INTO jrt_journal VALUES (?, ?, ?, ?, ?)"
# Rows per statement of insert_rows: powers of two, so n rows take about log2(n) statements and
# the statement cache holds a few texts only; 128 rows are 640 parameters, under SQLite's oldest
# limit (999).
_SIZES = (128, 64, 32, 16, 8, 4, 2, 1)
_INSERTS = {n: INSERT + ", (?, ?, ?, ?, ?)" * (n - 1) for n in _SIZES}
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
    """One write transaction, taking the write lock up front. Inside a transaction already open
    (a batch, see :func:`write_batch`) a savepoint of it: a failure undoes this write alone."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT jrt_write")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # else SQLite rolled the whole transaction back itself
                conn.execute("ROLLBACK TO jrt_write")
                conn.execute("RELEASE jrt_write")
            raise
        conn.execute("RELEASE jrt_write")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def insert_rows(conn: sqlite3.Connection, records: Sequence[Sequence[Any]]) -> None:
    """``INSERT OR IGNORE`` journal rows, in order (the first writer of a key wins, within
    ``records`` too), several per statement: each statement stepped costs the store's thread
    Python work and a release and re-take of the GIL, which it shares with the event loop (a
    batch of 25 rows: 3 statements instead of 25)."""
    if len(records) == 1:
        conn.execute(INSERT, records[0])
        return
    start, end = 0, len(records)
    for size in _SIZES:
        while end - start >= size:
            chunk = records[start : start + size]
            conn.execute(_INSERTS[size], [value for row in chunk for value in row])
            start += size


def get_row(conn: sqlite3.Connection, session_id: str, kind: int, key: str) -> Row | None:
    row = one(conn, SELECT_ONE, (session_id, kind, key))
    return None if row is None else Row(row[0], row[1])


# Session ids looked up per statement by fence: under SQLite's oldest limit of 999 parameters.
_FENCE_CHUNK = 500


def fence(conn: sqlite3.Connection, owners: Mapping[str, str] | None) -> None:
    """Inside a write transaction: refuse sessions whose claim is not (or no longer) ours.

    A batch's sessions are checked with one statement per owner that returns one row (each row
    stepped costs the store's thread Python work and a release and re-take of the GIL, which it
    shares with the event loop); only if some are not ours does it look up which, one by one."""
    if not owners:
        return
    owner_of = partial(_owner_of, conn)
    if len(owners) == 1:
        check_fence(owners, owner_of)
        return
    by_owner: dict[str, list[str]] = {}
    for sid, owner in owners.items():
        by_owner.setdefault(owner, []).append(sid)
    for owner, ids in by_owner.items():
        for start in range(0, len(ids), _FENCE_CHUNK):
            chunk = ids[start : start + _FENCE_CHUNK]
            sql = (
                "SELECT count(*) FROM jrt_sessions WHERE owner = ?"
                f" AND session_id IN ({', '.join('?' * len(chunk))})"
            )
            if one(conn, sql, (owner, *chunk))[0] != len(chunk):
                check_fence(owners, owner_of)  # raises Fenced, naming every such session


def _owner_of(conn: sqlite3.Connection, session_id: str) -> str | None:
    row = one(conn, "SELECT owner FROM jrt_sessions WHERE session_id = ?", (session_id,))
    return None if row is None else row[0]


def write_batch(conn: sqlite3.Connection, jobs: list[BatchJob]) -> None:
    """Run write jobs queued together (claims, releases, group commits of journal rows, ...) in
    one transaction: one commit, one fsync, for all of them. Each job's :func:`write` is a
    savepoint, so a job that fails undoes only its own changes. If the transaction is lost (its
    ``BEGIN`` or ``COMMIT`` fails, or SQLite rolls it back after an I/O error), every job whose
    work it carried fails with that error: no caller hears "done" for a change not committed.

    A batch of one job runs as if it were not batched: its own :func:`write` is the transaction
    (so a batched job makes its changes in one :func:`write`, or in one statement). A batch made
    only of lazy jobs (claims and releases, see ``sqlitesessions.lazily``) commits without
    waiting for an fsync; one lazy job is enough to make the others durable, never the reverse:
    a batch with any other job commits with ``synchronous=FULL``.
    """
    if len(jobs) == 1:
        jobs[0].call(conn)
        return
    lazy = all(job.lazy for job in jobs)
    if lazy:
        conn.execute("PRAGMA synchronous = NORMAL")  # not allowed inside a transaction
    try:
        _run_batch(conn, jobs)
    finally:
        if lazy:
            conn.execute("PRAGMA synchronous = FULL")


def _run_batch(conn: sqlite3.Connection, jobs: list[BatchJob]) -> None:
    done: list[BatchJob] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for job in jobs:
            if job.call(conn):
                done.append(job)
            if not conn.in_transaction:
                lost = job.error or sqlite3.OperationalError("the transaction was rolled back")
                _fail(done, lost)
                done = []
                conn.execute("BEGIN IMMEDIATE")  # the jobs after it get a transaction of their own
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _fail([j for j in jobs if j.error is None or j in done], exc)


def _fail(jobs: list[BatchJob], exc: BaseException) -> None:
    # Each caller gets an exception object of its own (one raised in several threads of control
    # would share and corrupt its traceback).
    for job in jobs:
        try:
            copy = type(exc)(*exc.args)
        except Exception:
            copy = sqlite3.OperationalError(str(exc))
        job.fail(copy)

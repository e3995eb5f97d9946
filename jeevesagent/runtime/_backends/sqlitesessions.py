"""The SQLite store's sessions table: claims, leases and releases (decided in Python by the
shared rules, inside a write transaction), workflow sessions made and cancelled, the listing, and
prune; and :func:`lazily`, the commits that need not wait for an fsync (claims and most
releases). Each function runs on the store's thread with its connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .._journal.backend import PruneResult, SessionInfo
from .._journal.rows import STEP, Record, Row
from .._journal.rules import (
    PruneCandidate,
    cancel_requested,
    claimed,
    created,
    select_prunable,
    suspended,
)
from .sqlitetx import INSERT, get_row, one, write

__all__ = [
    "SESSION_COLUMNS",
    "claim",
    "claim_in",
    "create_session",
    "lazily",
    "list_sessions",
    "prune",
    "release",
    "release_lazy",
    "renew",
    "request_cancel",
    "resumable",
    "session_row",
    "suspend",
    "wake_in",
]

# Every column of a sessions row, in SessionInfo's order.
SESSION_COLUMNS = (
    "session_id, status, owner, lease_expires, created_at, updated_at, steps, workflow,"
    " cancel_requested, waiting_for, wake_at"
)
INSERT_SESSION = f"INSERT INTO jrt_sessions ({SESSION_COLUMNS}) VALUES ({', '.join('?' * 11)})"


def _info(row: Sequence[Any]) -> SessionInfo:
    """A sessions row as SessionInfo (SQLite keeps ``cancel_requested`` as 0 or 1)."""
    return SessionInfo._make((*row[:8], bool(row[8]), *row[9:]))


def session_row(conn: sqlite3.Connection, session_id: str) -> SessionInfo | None:
    row = one(
        conn, f"SELECT {SESSION_COLUMNS} FROM jrt_sessions WHERE session_id = ?", (session_id,)
    )
    return None if row is None else _info(row)


@contextlib.contextmanager
def lazily(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits made inside do not wait for an fsync (``synchronous=NORMAL`` in WAL mode): they
    are visible to every connection at once and survive a crash of this process; a crash of the
    host (power loss) may undo them, unless a later commit -- any ``synchronous=FULL`` one, by
    anyone, syncs the whole write-ahead log -- or a checkpoint made them durable first. Only for
    changes whose loss is safe: claims (a lost claim was never used -- every record written under
    it is a FULL commit, which makes it durable first) and releases (see
    :func:`~jeevesagent.runtime._journaled.claims.durable_release`).

    Inside a transaction already open (a batch, see ``sqlitetx.write_batch``, whose callers pass
    ``lazy=True``) it changes nothing: the batch commits lazily if all its jobs are lazy, else
    durably -- a claim or release that shares a commit with records is as durable as they are."""
    if conn.in_transaction:  # SQLite refuses to change the level inside a transaction
        yield
        return
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = FULL")


def claim_in(conn: sqlite3.Connection, session_id: str, owner: str, lease: float) -> SessionInfo:
    """Inside a write transaction: the claim (see :meth:`JournalBackend.claim`)."""
    info = session_row(conn, session_id)
    result = claimed(info, session_id, owner, lease, time.time())
    if info is None:
        conn.execute(INSERT_SESSION, result)
    elif result != info:  # workflow and cancel_requested stay as they are
        conn.execute(
            "UPDATE jrt_sessions SET status = ?, owner = ?, lease_expires = ?, "
            "updated_at = ?, waiting_for = NULL, wake_at = NULL WHERE session_id = ?",
            (result.status, owner, result.lease_expires, result.updated_at, session_id),
        )
    return result


def claim(conn: sqlite3.Connection, session_id: str, owner: str, lease: float) -> SessionInfo:
    with write(conn):
        return claim_in(conn, session_id, owner, lease)


def renew(conn: sqlite3.Connection, session_id: str, owner: str, lease: float) -> bool:
    now = time.time()
    cur = conn.execute(
        "UPDATE jrt_sessions SET lease_expires = ?, updated_at = ? "
        "WHERE session_id = ? AND owner = ?",
        (now + lease, now, session_id, owner),
    )
    return cur.rowcount == 1


def release(conn: sqlite3.Connection, session_id: str, owner: str, status: str, steps: int) -> None:
    conn.execute(
        "UPDATE jrt_sessions SET status = ?, owner = NULL, lease_expires = NULL, updated_at = ?, "
        "steps = ? WHERE session_id = ? AND owner = ?",
        (status, time.time(), steps, session_id, owner),
    )


def release_lazy(
    conn: sqlite3.Connection, session_id: str, owner: str, status: str, steps: int
) -> None:
    with lazily(conn):
        release(conn, session_id, owner, status, steps)


def suspend(
    conn: sqlite3.Connection,
    session_id: str,
    owner: str,
    waiting_for: str | None,
    wake_at: float | None,
    steps: int,
) -> SessionInfo | None:
    with write(conn):
        info = session_row(conn, session_id)
        after = suspended(info, owner, waiting_for, wake_at, steps, time.time())
        sid = session_id
        if after is not None:
            conn.execute(
                "UPDATE jrt_sessions SET status = ?, owner = NULL, lease_expires = NULL, "
                "updated_at = ?, steps = ?, waiting_for = ?, wake_at = ? WHERE session_id = ?",
                (after.status, after.updated_at, steps, after.waiting_for, after.wake_at, sid),
            )
        return after


# Waiting sessions to run again: a signal they wait for is in the mailbox, or their time came.
_RESUMABLE = f"""
SELECT {SESSION_COLUMNS} FROM jrt_sessions AS s
WHERE s.status = 'waiting' AND s.workflow IN ({{names}})
  AND (s.wake_at <= ? OR EXISTS (
      SELECT 1 FROM jrt_mailbox AS m WHERE m.session_id = s.session_id AND m.name = s.waiting_for))
ORDER BY s.created_at, s.session_id
"""


def resumable(
    conn: sqlite3.Connection, workflows: Sequence[str], limit: int | None
) -> list[SessionInfo]:
    sql = _RESUMABLE.format(names=", ".join("?" * len(workflows)))
    params: list[Any] = [*workflows, time.time()]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_info(row) for row in conn.execute(sql, params)]


def wake_in(conn: sqlite3.Connection, workflows: Sequence[str]) -> float | None:
    names = ", ".join("?" * len(workflows))
    sql = (
        "SELECT min(wake_at) FROM jrt_sessions WHERE status = 'waiting' "
        f"AND wake_at IS NOT NULL AND workflow IN ({names})"
    )
    row = one(conn, sql, tuple(workflows))
    return None if row is None or row[0] is None else float(row[0]) - time.time()


def list_sessions(
    conn: sqlite3.Connection,
    status: str | None,
    workflows: Sequence[str] | None,
    limit: int | None,
) -> list[SessionInfo]:
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if workflows is not None:
        where.append(f"workflow IN ({', '.join('?' * len(workflows))})")
        params.extend(workflows)
    sql = f"SELECT {SESSION_COLUMNS} FROM jrt_sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, session_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_info(row) for row in conn.execute(sql, params)]


def create_session(
    conn: sqlite3.Connection,
    session_id: str,
    workflow: str,
    arguments: Record,
    owner: str | None,
    lease: float,
) -> tuple[SessionInfo, Row | None]:
    # BEGIN IMMEDIATE: of many stores creating one session at once, the first to take the write
    # lock makes it, and the others find its row.
    with write(conn):
        info = session_row(conn, session_id)
        if info is None:
            conn.execute(INSERT, arguments)  # first writer wins, as in write_rows
            info = created(session_id, workflow, owner, lease, time.time())
            conn.execute(INSERT_SESSION, info)
        return info, get_row(conn, session_id, STEP, arguments.key)


def request_cancel(conn: sqlite3.Connection, session_id: str) -> SessionInfo | None:
    with write(conn):
        info = session_row(conn, session_id)
        if info is None:
            return None
        after = cancel_requested(info, time.time())
        if after != info:
            conn.execute(
                "UPDATE jrt_sessions SET status = ?, owner = ?, lease_expires = ?, "
                "updated_at = ?, cancel_requested = 1 WHERE session_id = ?",
                (after.status, after.owner, after.lease_expires, after.updated_at, session_id),
            )
        return after


PRUNE_SESSIONS = "SELECT session_id, status, owner, lease_expires, updated_at FROM jrt_sessions"
# Sessions with journal rows or signals but no sessions row: last activity is their newest row.
PRUNE_ORPHANS = """
SELECT session_id, NULL, NULL, NULL, max(created_at) FROM (
    SELECT session_id, created_at FROM jrt_journal {where}
    UNION ALL SELECT session_id, created_at FROM jrt_mailbox {where}
) AS r
WHERE NOT EXISTS (SELECT 1 FROM jrt_sessions AS s WHERE s.session_id = r.session_id)
GROUP BY session_id
"""


def prune(
    conn: sqlite3.Connection,
    older_than: float | None,
    sessions: list[str] | None,
    statuses: tuple[str, ...] | None,
    dry_run: bool,
) -> PruneResult:
    # BEGIN IMMEDIATE: no other connection writes (claims included) until the deletes commit.
    with write(conn):
        now = time.time()
        candidates: list[PruneCandidate] = []
        for where, params in _id_filters(sessions):
            sql = f"{PRUNE_SESSIONS} {where}"
            candidates.extend(PruneCandidate(*row) for row in conn.execute(sql, params))
            if statuses is None:  # sessions without a row never match a status filter
                sql = PRUNE_ORPHANS.format(where=where)
                candidates.extend(PruneCandidate(*row) for row in conn.execute(sql, params))
        result = select_prunable(candidates, older_than, statuses, now)
        if not dry_run:
            gone = [(sid,) for sid in result.pruned]
            for table in ("jrt_journal", "jrt_mailbox", "jrt_sessions"):
                conn.executemany(f"DELETE FROM {table} WHERE session_id = ?", gone)
    return result


def _id_filters(sessions: list[str] | None) -> list[tuple[str, dict[str, str]]]:
    """WHERE clauses (and parameters) to run the candidate queries with: every session, or one
    indexed lookup per id."""
    if sessions is None:
        return [("", {})]
    return [("WHERE session_id = :sid", {"sid": sid}) for sid in sessions]

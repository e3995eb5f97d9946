"""The Postgres store's sessions table: the statements that open (claim, load and look in the
mailbox: one statement), renew and release sessions, create workflow sessions, request
cancellation and list sessions, and the coroutines (run on the pool's loop) that need more than
one statement. Kept apart from :mod:`.postgres`, which calls them.

Claims and most releases are committed asynchronously (``synchronous_commit`` off for their
transaction alone, set in the statement itself): visible to every session at once, durable when
the WAL writer or any later synchronous commit -- every journal write is one -- flushes the WAL,
so the caller does not wait for a flush. A claim lost in a server crash was never used (records
written under it commit synchronously, flushing it first); for releases see
:func:`~jeevesagent.runtime._journaled.claims.durable_release`.

Every time is the server's clock. A statement that changes what a waiter may be waiting for
(a release, a new session, a cancel request) sends ``pg_notify('jrt_signal', session_id)`` in
the same statement, so it costs no extra round trip and commits with the change.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._journal.backend import (
    SESSION_STATUSES,
    STREAM,
    Fenced,
    OpenedSession,
    SessionInfo,
    SessionJournal,
)
from .._journal.rows import STEP, Record, Row
from .pglisten import CHANNEL
from .pgschema import _NOW
from .pgwrite import NOTIFY_STREAMS, Key, conflicts_of, get_row, row_args, rows_from

__all__ = [
    "CLAIM",
    "CLAIMED",
    "JOURNAL",
    "RELEASE",
    "RELEASE_LAZY",
    "RENEW",
    "SESSION",
    "SESSION_COLS",
    "claim",
    "create_session",
    "finish",
    "list_sessions",
    "load_journal",
    "open_session",
    "request_cancel",
    "resumable",
    "suspend",
    "taken_over",
    "wake_in",
]

#: Every column of a sessions row, in SessionInfo's order.
SESSION_COLS = (
    "session_id, status, owner, lease_expires, created_at, updated_at, steps, workflow,"
    " cancel_requested, waiting_for, wake_at"
)
# A claim changes status, owner and lease only: workflow and cancel_requested stay.
# The claim rule, shared by CLAIM, _OPEN and pgopen's batch open (the sessions table as `s`): a
# session is granted if nobody holds it, we hold it, or its lease ran out.
CLAIMED = """ON CONFLICT (session_id) DO UPDATE SET
        status = 'running', owner = EXCLUDED.owner,
        lease_expires = EXCLUDED.lease_expires, updated_at = EXCLUDED.updated_at,
        waiting_for = NULL, wake_at = NULL
    WHERE (s.owner IS NULL OR s.owner = EXCLUDED.owner
           OR s.lease_expires IS NULL OR s.lease_expires <= EXCLUDED.updated_at)"""
CLAIM = f"""
WITH now AS (SELECT {_NOW} AS t)
INSERT INTO jrt_sessions AS s
    (session_id, status, owner, lease_expires, created_at, updated_at)
SELECT $1, 'running', $2, t + $3, t, t FROM now
{CLAIMED}
RETURNING {SESSION_COLS}
"""
# The claim committed asynchronously (see above: `lazy` is referenced, so it is evaluated) and,
# when granted, the session's journal and mailbox names in the same statement: a row whose last
# column is the sessions row with the mailbox names (an anonymous record), then, only if granted,
# one row per journal row (last column NULL). No row at all: not granted.
# Rows rather than arrays of the journal's columns: asyncpg decodes text[] and anonymous records
# natively but not int2[], bytea[] or float8[], whose codecs it looks up with an introspection
# query the first time each connection meets them -- ~10 ms on a fresh connection, so every
# pooled connection's first open paid it, and the server's CPU with it. (Rows cost ~0.1 us more
# per journal row to decode than arrays once a connection is warm.)
# The last condition keeps the journal read true to the claim. Under READ COMMITTED, ON CONFLICT
# DO UPDATE sees the newest version of the sessions row, even one committed after this statement
# took its snapshot -- say by an owner that released the session in the transaction that wrote
# its last steps, which the journal read below, on the snapshot, would then miss. So the claim is
# granted only on the version of the row that the snapshot sees (same xmin); otherwise nothing is
# returned and `open_session` asks again, with a new snapshot. The record also carries the owner
# the snapshot sees: a claim taken over from another owner reads the journal again (taken_over).
_OPEN = f"""
WITH now AS (SELECT {_NOW} AS t, set_config('synchronous_commit', 'off', true) AS lazy),
c AS (
    INSERT INTO jrt_sessions AS s
        (session_id, status, owner, lease_expires, created_at, updated_at)
    SELECT $1, 'running', $2, t + $3, t, t FROM now WHERE lazy = 'off'
    {CLAIMED}
      AND s.xmin = (SELECT xmin FROM jrt_sessions WHERE session_id = $1)
    RETURNING {SESSION_COLS}
)
SELECT NULL::int2, NULL::text, NULL::bytea, NULL::float8,
       ROW(c.*, m.names, (SELECT owner FROM jrt_sessions WHERE session_id = $1))
FROM c, LATERAL (SELECT array_agg(DISTINCT name ORDER BY name) AS names
                 FROM jrt_mailbox WHERE session_id = $1) AS m
UNION ALL
SELECT kind, key, value, created_at, NULL FROM jrt_journal
WHERE session_id = $1 AND EXISTS (SELECT FROM c)
"""
SESSION = f"SELECT {SESSION_COLS} FROM jrt_sessions WHERE session_id = $1"
RENEW = f"""
UPDATE jrt_sessions SET lease_expires = n.t + $3, updated_at = n.t
FROM (SELECT {_NOW} AS t) AS n
WHERE session_id = $1 AND owner = $2
"""
# Someone may wait for the session's result: the notice wakes them (one statement).
RELEASE = f"""
WITH up AS (
    UPDATE jrt_sessions
    SET status = $3, owner = NULL, lease_expires = NULL, steps = $4, updated_at = {_NOW}
    WHERE session_id = $1 AND owner = $2
    RETURNING session_id
)
SELECT pg_notify('{CHANNEL}', session_id) FROM up
"""
# The same, committed asynchronously (see above), for a release whose loss is safe.
RELEASE_LAZY = f"""
WITH up AS (
    UPDATE jrt_sessions
    SET status = $3, owner = NULL, lease_expires = NULL, steps = $4, updated_at = n.t
    FROM (SELECT {_NOW} AS t, set_config('synchronous_commit', 'off', true) AS lazy) AS n
    WHERE session_id = $1 AND owner = $2 AND n.lazy = 'off'
    RETURNING session_id
)
SELECT pg_notify('{CHANNEL}', session_id) FROM up
"""
# A session's end with its outcome (JournalBackend.finish), in one statement, committed
# synchronously: the release as in RELEASE and, only if it released (we held the claim), the
# outcome rows (first writer wins). One row per notice (kind NULL: we held it) and per row
# inserted; no row at all: fenced. $1 id, $2 owner, $3 status, $4 steps, $5-$11 the rows (see
# pgwrite.rows_from; their session ids are $1's).
FINISH = f"""
WITH up AS (
    UPDATE jrt_sessions
    SET status = $3, owner = NULL, lease_expires = NULL, steps = $4, updated_at = {_NOW}
    WHERE session_id = $1 AND owner = $2
    RETURNING session_id
), ins AS (
    INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
    SELECT up.session_id, r.kind, r.key, r.value, r.created_at
    FROM up, {rows_from(5)} AS r
    ON CONFLICT DO NOTHING
    RETURNING kind, key
), n AS MATERIALIZED (SELECT pg_notify('{CHANNEL}', session_id) FROM up)
SELECT NULL::int2, NULL::text FROM n
UNION ALL SELECT kind, key FROM ins
"""
# A new workflow session: its sessions row and, only if that row is new, its arguments (first
# writer wins) and a notice for idle workers, in one statement. Returns nothing when a sessions
# row existed; then a separate statement reads it (this statement's snapshot may predate the row
# that won). $1 id, $2 workflow, $3 owner or NULL, $4 lease, $5 kind, $6 key, $7 value,
# $8 created_at of the arguments.
_CREATE = f"""
WITH now AS (SELECT {_NOW} AS t), s AS (
    INSERT INTO jrt_sessions ({SESSION_COLS})
    SELECT $1::text, CASE WHEN $3::text IS NULL THEN 'pending' ELSE 'running' END, $3::text,
        CASE WHEN $3::text IS NULL THEN NULL ELSE t + $4::float8 END, t, t, 0, $2::text, false,
        NULL, NULL
    FROM now
    ON CONFLICT (session_id) DO NOTHING
    RETURNING {SESSION_COLS}
), args AS (
    INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
    SELECT session_id, $5::int2, $6::text, $7::bytea, $8::float8 FROM s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT {SESSION_COLS}, EXISTS (SELECT 1 FROM args), pg_notify('{CHANNEL}', session_id) FROM s
"""
# request_cancel: the rules of rules.cancel_requested, in one statement on the locked row. An
# ended session is not updated (nothing returned; a separate statement reads it).
_LIVE = "(s.status = 'running' AND s.owner IS NOT NULL AND s.lease_expires >= n.t)"
_CANCEL = f"""
WITH up AS (
    UPDATE jrt_sessions AS s SET
        cancel_requested = true,
        updated_at = n.t,
        status = CASE WHEN {_LIVE} THEN s.status ELSE 'cancelled' END,
        owner = CASE WHEN {_LIVE} THEN s.owner END,
        lease_expires = CASE WHEN {_LIVE} THEN s.lease_expires END
    FROM (SELECT {_NOW} AS t) AS n
    WHERE s.session_id = $1 AND s.status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING {SESSION_COLS}
)
SELECT *, pg_notify('{CHANNEL}', session_id) FROM up
"""


# suspend: the rules of rules.suspended, in one statement on the row ``owner`` holds, with a
# notice (a signal may have come meanwhile: a worker looks again). $1 id, $2 owner,
# $3 waiting_for, $4 wake_at, $5 steps.
_SUSPEND = f"""
WITH up AS (
    UPDATE jrt_sessions AS s SET
        status = CASE WHEN s.cancel_requested THEN 'cancelled' ELSE 'waiting' END,
        owner = NULL, lease_expires = NULL, updated_at = {_NOW}, steps = $5,
        waiting_for = CASE WHEN s.cancel_requested THEN NULL ELSE $3::text END,
        wake_at = CASE WHEN s.cancel_requested THEN NULL ELSE $4::float8 END
    WHERE s.session_id = $1 AND s.owner = $2
    RETURNING {SESSION_COLS}
)
SELECT *, pg_notify('{CHANNEL}', session_id) FROM up
"""
# Waiting sessions to run again: a signal they wait for is in the mailbox, or their time came
# (server clock). $1 workflows, $2 limit or NULL.
_RESUMABLE = f"""
SELECT {SESSION_COLS} FROM jrt_sessions AS s
WHERE s.status = 'waiting' AND s.workflow = ANY($1::text[])
  AND (s.wake_at <= {_NOW} OR EXISTS (
      SELECT 1 FROM jrt_mailbox AS m WHERE m.session_id = s.session_id AND m.name = s.waiting_for))
ORDER BY s.created_at, s.session_id
LIMIT $2
"""
_WAKE_IN = f"""
SELECT min(wake_at) - {_NOW} FROM jrt_sessions
WHERE status = 'waiting' AND wake_at IS NOT NULL AND workflow = ANY($1::text[])
"""


async def suspend(
    pool: Any,
    session_id: str,
    owner: str,
    waiting_for: str | None,
    wake_at: float | None,
    steps: int,
) -> SessionInfo | None:
    row = await pool.fetchrow(_SUSPEND, session_id, owner, waiting_for, wake_at, steps)
    return None if row is None else SessionInfo(*row[:11])


async def resumable(pool: Any, workflows: Sequence[str], limit: int | None) -> list[SessionInfo]:
    return [SessionInfo(*r) for r in await pool.fetch(_RESUMABLE, list(workflows), limit)]


async def wake_in(pool: Any, workflows: Sequence[str]) -> float | None:
    value = await pool.fetchval(_WAKE_IN, list(workflows))
    return None if value is None else float(value)


async def list_sessions(
    pool: Any, status: str | None, workflows: Sequence[str] | None, limit: int | None
) -> list[SessionInfo]:
    # Only the filters asked for, so that each variant is planned with the index.
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if workflows is not None:
        args.append(list(workflows))
        where.append(f"workflow = ANY(${len(args)}::text[])")
    sql = f"SELECT {SESSION_COLS} FROM jrt_sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, session_id"
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    return [SessionInfo(*r) for r in await pool.fetch(sql, *args)]


async def claim(pool: Any, session_id: str, owner: str, lease: float) -> SessionInfo:
    row = await pool.fetchrow(CLAIM, session_id, owner, float(lease))
    if row is None:  # held by someone else: a separate statement sees the row that won
        row = await pool.fetchrow(SESSION, session_id)
    return SessionInfo(*row)


async def open_session(pool: Any, session_id: str, owner: str, lease: float) -> OpenedSession:
    for _ in range(_OPEN_TRIES):
        rows = await pool.fetch(_OPEN, session_id, owner, float(lease))
        if rows:
            break
        # Not granted. A separate statement sees the row as it is now: held by someone else,
        # or changed after _OPEN's snapshot (see _OPEN) -- then ask again, with a new snapshot.
        info = SessionInfo(*await pool.fetchrow(SESSION, session_id))
        if not _claimable(info, owner):
            return OpenedSession(info, None, [])
    else:
        return OpenedSession(info, None, [])
    journal = SessionJournal({}, {})
    steps, streams = journal.steps, journal.streams
    head: Any = None
    for kind, key, value, created_at, session in rows:
        if session is None:
            (steps if kind == STEP else streams)[key] = Row(value, created_at)
        else:
            head = session  # the sessions row, the mailbox names, the owner it was taken from
    if taken_over(head[12], owner):
        journal = await load_journal(pool, session_id)
    return OpenedSession(SessionInfo(*head[:11]), journal, head[11] or [])


# A session's journal rows, read by a statement of its own (a snapshot taken now).
JOURNAL = "SELECT kind, key, value, created_at FROM jrt_journal WHERE session_id = $1"


async def load_journal(pool: Any, session_id: str) -> SessionJournal:
    journal = SessionJournal({}, {})
    for kind, key, value, created_at in await pool.fetch(JOURNAL, session_id):
        (journal.steps if kind == STEP else journal.streams)[key] = Row(value, created_at)
    return journal


def taken_over(previous: str | None, owner: str) -> bool:
    """Whether a granted claim took the session from another owner (whose lease had run out).

    Then the journal that came with the claim may lack that owner's last rows, so the caller
    reads it again with a statement of its own. The old owner's fenced insert holds the sessions
    row ``FOR SHARE`` while it commits; the claim waits for that lock, then is granted (a lock
    leaves the row's ``xmin`` as it was, so _OPEN's snapshot check passes) while the claim's own
    journal read keeps the statement's older snapshot, which misses those rows. A takeover is
    rare; the other opens keep their one round trip."""
    return previous is not None and previous != owner


# How often open_session asks again when the sessions row changed under its snapshot: each time
# takes a new snapshot, so only another commit in that instant makes it ask once more.
_OPEN_TRIES = 5


def _claimable(info: SessionInfo, owner: str) -> bool:
    """Whether ``owner``'s claim would be granted on the row ``info`` (the rule of _OPEN, with
    this host's clock for the lease)."""
    return (
        info.owner is None
        or info.owner == owner
        or info.lease_expires is None
        or info.lease_expires <= time.time()
    )


async def create_session(
    pool: Any, session_id: str, workflow: str, arguments: Record, owner: str | None, lease: float
) -> tuple[SessionInfo, Row | None]:
    _, kind, key, data, created_at = arguments
    row = await pool.fetchrow(
        _CREATE, session_id, workflow, owner, float(lease), kind, key, data, created_at
    )
    if row is not None:
        info = SessionInfo(*row[:11])
        if row[11]:
            return info, Row(data, created_at)
        # The arguments key was journaled before the session existed: the first value stays.
        return info, await get_row(pool, session_id, kind, key)
    found = await pool.fetchrow(SESSION, session_id)
    return SessionInfo(*found), await get_row(pool, session_id, kind, key)


async def request_cancel(pool: Any, session_id: str) -> SessionInfo | None:
    row = await pool.fetchrow(_CANCEL, session_id)
    if row is None:  # no such session, or it ended: unchanged
        row = await pool.fetchrow(SESSION, session_id)
    return None if row is None else SessionInfo(*row[:11])


async def finish(
    pool: Any, session_id: str, owner: str, records: Sequence[Record], status: str, steps: int
) -> dict[Key, Row]:
    """See :meth:`JournalBackend.finish`: one statement (:data:`FINISH`), one transaction."""
    if status not in SESSION_STATUSES:
        raise ValueError(f"unknown session status {status!r}; one of {SESSION_STATUSES}")
    found = await pool.fetch(FINISH, session_id, owner, status, steps, *row_args(records))
    if not any(kind is None for kind, _ in found):
        raise Fenced({session_id})
    if any(r.kind == STREAM for r in records):
        await pool.execute(NOTIFY_STREAMS, [session_id])  # as a journal write of streams does
    inserted = [(session_id, kind, key) for kind, key in found if kind is not None]
    return await conflicts_of(pool, records, inserted)

"""The Postgres store's mailbox: the statements that send a signal (with its notice), take the
oldest one into the journal (fenced, one statement) and count or list what is waiting, and the
coroutine that takes one (run on the pool's loop). Kept apart from :mod:`.postgres`, which calls
them.
"""

from __future__ import annotations

from typing import Any

from .._journal.backend import STEP, Fenced, Row
from .pglisten import CHANNEL
from .pgschema import _NOW
from .pgwrite import get_row

__all__ = ["PENDING", "PENDING_NAMES", "SEND", "take"]

SEND = f"""
WITH ins AS (
    INSERT INTO jrt_mailbox (session_id, name, payload, created_at) VALUES ($1, $2, $3, $4)
    RETURNING session_id
)
SELECT pg_notify('{CHANNEL}', session_id) FROM ins
"""
# One statement: the receipt if ``key`` is already journaled; else, if the owner still holds
# the session (its row locked FOR SHARE), move the oldest signal into the journal as ``key``
# (``key`` NULL: only remove it from the mailbox). The journal insert has no ON CONFLICT: if a
# concurrent transaction journals the same key first, the unique violation aborts the
# statement, the signal stays in the mailbox, and the caller reads the receipt that won.
# `waiting` (read only when fenced) tells whether there was anything to take.
_TAKE = f"""
WITH fence AS MATERIALIZED (
    SELECT owner FROM jrt_sessions
    WHERE session_id = $1 AND $3::text IS NOT NULL AND $4::text IS NOT NULL
    FOR SHARE
), ok AS MATERIALIZED (
    SELECT $3::text IS NULL OR $4::text IS NULL
        OR EXISTS (SELECT 1 FROM fence WHERE owner = $4) AS ok
), existing AS MATERIALIZED (
    SELECT value, created_at FROM jrt_journal WHERE session_id = $1 AND kind = 0 AND key = $3
), taken AS (
    DELETE FROM jrt_mailbox WHERE id = (
        SELECT id FROM jrt_mailbox
        WHERE session_id = $1 AND name = $2
          AND (SELECT ok FROM ok) AND NOT EXISTS (SELECT 1 FROM existing)
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    RETURNING payload, {_NOW} AS taken_at
), ins AS (
    INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
    SELECT $1, 0, $3, payload, taken_at FROM taken WHERE $3::text IS NOT NULL
)
SELECT (SELECT ok FROM ok), e.value, e.created_at, t.payload, t.taken_at,
    EXISTS (SELECT 1 FROM jrt_mailbox WHERE session_id = $1 AND name = $2)
FROM (SELECT 1) AS one
LEFT JOIN existing AS e ON true
LEFT JOIN taken AS t ON true
"""
PENDING = "SELECT count(*) FROM jrt_mailbox WHERE session_id = $1"
PENDING_NAMES = "SELECT DISTINCT name FROM jrt_mailbox WHERE session_id = $1 ORDER BY name"


async def take(
    pool: Any, session_id: str, name: str, key: str | None, owner: str | None
) -> Row | None:
    import asyncpg

    try:
        found = await pool.fetchrow(_TAKE, session_id, name, key, owner)
    except asyncpg.UniqueViolationError:
        # A concurrent taker journaled `key` first; nothing was taken. Adopt its receipt.
        if key is None:  # cannot happen: nothing is journaled without a key
            raise
        return await get_row(pool, session_id, STEP, key)
    ok, old_value, old_at, value, taken_at, waiting = found
    if old_value is not None:
        return Row(old_value, old_at)
    if not ok:
        if waiting:
            raise Fenced({session_id})
        return None
    return None if value is None else Row(value, taken_at)

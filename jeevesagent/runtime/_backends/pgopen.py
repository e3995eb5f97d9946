"""Group open for the Postgres store: session opens that overlap share one statement.

An open that finds no other open in flight runs alone at once (:func:`pgsessions.open_session`,
one statement), so a lone caller waits for nothing. Opens that arrive while one is in flight
queue into one batch, which its first caller runs when the open in flight is done: one statement
claims every session of the batch (the same rules and the same snapshot check as
:data:`pgsessions._OPEN`) and returns their journals and mailbox names. A session that the batch
did not grant -- held by another owner, changed after the statement's snapshot, or the batch
failed -- is opened again alone by its own caller, which then sees what a lone open would have.

Why: 50 sessions opening at once otherwise take 50 pooled connections' worth of statements --
on a fresh pool, 9 new server processes, each ~4 ms of the server's CPU to start and warm up --
where one connection and two statements do. Nothing runs in the background: every statement is
run by one of the callers, on the pool's asyncio loop (the store's bridge puts every call there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from .._journal.backend import OpenedSession, SessionInfo, SessionJournal
from .._journal.rows import STEP, Row
from .pgerrors import driver_errors
from .pglisten import CHANNEL
from .pgschema import _NOW
from .pgsessions import CLAIMED, RELEASE_LAZY, SESSION_COLS, load_journal, open_session, taken_over

__all__ = ["MAX_BATCH", "Batcher", "lazy_releases", "open_many", "opens", "release_many"]

#: At most this many sessions per batch statement.
MAX_BATCH = 100

# pgsessions._OPEN for many sessions: $1 session ids, $2 owners, $3 leases (text, read as
# float8: see pgwrite.rows_from). The claims lock their rows in session id order, as a fenced
# batch insert does, so that two batches never wait on each other in a cycle. Each granted
# session gives a row with its sessions row and mailbox names (an anonymous record), then one row
# per journal row; a session not granted gives nothing.
_OPEN_MANY = f"""
WITH now AS (SELECT {_NOW} AS t, set_config('synchronous_commit', 'off', true) AS lazy),
c AS (
    INSERT INTO jrt_sessions AS s
        (session_id, status, owner, lease_expires, created_at, updated_at)
    SELECT r.session_id, 'running', r.owner, t + r.lease::float8, t, t
    FROM now, unnest($1::text[], $2::text[], $3::text[]) AS r(session_id, owner, lease)
    WHERE lazy = 'off'
    ORDER BY r.session_id
    {CLAIMED}
      AND s.xmin = (SELECT x.xmin FROM jrt_sessions AS x WHERE x.session_id = s.session_id)
    RETURNING {SESSION_COLS}
)
SELECT c.session_id, NULL::int2, NULL::text, NULL::bytea, NULL::float8,
       ROW(c.*, m.names, (SELECT x.owner FROM jrt_sessions AS x WHERE x.session_id = c.session_id))
FROM c, LATERAL (SELECT array_agg(DISTINCT name ORDER BY name) AS names
                 FROM jrt_mailbox AS b WHERE b.session_id = c.session_id) AS m
UNION ALL
SELECT j.session_id, j.kind, j.key, j.value, j.created_at, NULL FROM jrt_journal AS j
WHERE j.session_id IN (SELECT session_id FROM c)
"""


# pgsessions.RELEASE_LAZY for many sessions: $1 session ids, $2 owners, $3 statuses, $4 steps
# (text). The rows are locked in session id order first (see _OPEN_MANY).
_RELEASE_MANY = f"""
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS r(session_id, owner, status, steps)
), lock AS MATERIALIZED (
    SELECT s.session_id FROM jrt_sessions AS s JOIN r USING (session_id)
    WHERE s.owner = r.owner ORDER BY s.session_id FOR UPDATE OF s
), up AS (
    UPDATE jrt_sessions AS s
    SET status = r.status, owner = NULL, lease_expires = NULL, steps = r.steps::int4,
        updated_at = n.t
    FROM r, (SELECT {_NOW} AS t, set_config('synchronous_commit', 'off', true) AS lazy) AS n
    WHERE s.session_id = r.session_id AND s.owner = r.owner AND n.lazy = 'off'
      AND s.session_id IN (SELECT session_id FROM lock)
    RETURNING s.session_id
)
SELECT pg_notify('{CHANNEL}', session_id) FROM up
"""


async def release_many(pool: Any, requests: Mapping[str, tuple[str, str, int]]) -> dict[str, None]:
    """Release every session of ``requests`` (session id -> owner, status, steps) lazily, in
    one statement (each only if ``owner`` holds it, as RELEASE_LAZY)."""
    ids = list(requests)
    await pool.execute(
        _RELEASE_MANY,
        ids,
        [requests[i][0] for i in ids],
        [requests[i][1] for i in ids],
        [str(requests[i][2]) for i in ids],
    )
    return dict.fromkeys(ids)


async def open_many(
    pool: Any, requests: Mapping[str, tuple[str, float]]
) -> dict[str, OpenedSession]:
    """Claim and load every session of ``requests`` (session id -> owner, lease) in one
    statement: the sessions granted, opened; the others are left out."""
    ids = list(requests)
    rows = await pool.fetch(
        _OPEN_MANY,
        ids,
        [requests[i][0] for i in ids],
        [repr(float(requests[i][1])) for i in ids],
    )
    heads: dict[str, Any] = {}
    journals: dict[str, SessionJournal] = {}
    for session_id, kind, key, value, created_at, head in rows:
        journal = journals.get(session_id)
        if journal is None:
            journal = journals[session_id] = SessionJournal({}, {})
        if head is not None:
            heads[session_id] = head
        else:
            (journal.steps if kind == STEP else journal.streams)[key] = Row(value, created_at)
    for sid, head in heads.items():
        if taken_over(head[12], requests[sid][0]):  # see pgsessions.taken_over
            journals[sid] = await load_journal(pool, sid)
    return {
        sid: OpenedSession(SessionInfo(*head[:11]), journals[sid], head[11] or [])
        for sid, head in heads.items()
    }


A = TypeVar("A")
R = TypeVar("R")


class _Batch(Generic[A, R]):
    __slots__ = ("done", "requests", "results", "turn")

    def __init__(self) -> None:
        self.requests: dict[str, A] = {}
        self.results: dict[str, R] = {}
        self.turn = asyncio.Event()  # its leader may run it
        self.done = asyncio.Event()  # it ran (or failed): its callers read `results`


class Batcher(Generic[A, R]):
    """Batches the overlapping calls of one kind (opens, lazy releases) of one store: see the
    module. ``one(pool, session_id, args)`` does one session's call alone; ``many(pool,
    {session_id: args})`` does several in one statement and returns the results of those it
    did (a session left out is done alone by its caller). Used on the pool's asyncio loop only.
    """

    def __init__(
        self,
        one: Callable[[Any, str, A], Awaitable[R]],
        many: Callable[[Any, dict[str, A]], Awaitable[dict[str, R]]],
    ) -> None:
        self._one = one
        self._many = many
        self._busy = False  # a call (alone or a batch) is in flight
        self._waiting: _Batch[A, R] | None = None  # the batch that runs next; callers join it
        self.batches = 0  # batch statements run (for tests and benchmarks)

    async def call(self, pool: Any, session_id: str, args: A) -> R:
        if not self._busy:
            self._busy = True
            try:
                return await self._one(pool, session_id, args)
            finally:
                self._pass_turn()
        batch = self._waiting
        if batch is not None and (session_id in batch.requests or len(batch.requests) >= MAX_BATCH):
            # One statement cannot change a row twice; a full batch takes no more. Alone, now.
            return await self._one(pool, session_id, args)
        if batch is None:
            batch = self._waiting = _Batch()
            batch.requests[session_id] = args
            await self._lead(pool, batch)
        else:
            batch.requests[session_id] = args
            await batch.done.wait()
        if session_id in batch.results:
            return batch.results[session_id]
        return await self._one(pool, session_id, args)  # left out, or the batch failed

    async def _lead(self, pool: Any, batch: _Batch[A, R]) -> None:
        had_turn = False
        try:
            await batch.turn.wait()
            had_turn = True
            try:
                batch.results = await self._many(pool, batch.requests)
                self.batches += 1
            except driver_errors():
                # Nothing was done (one statement: it rolled back) -- unless the connection
                # failed after the commit, and then doing it again changes nothing. Every
                # caller does its call alone instead, and meets the error itself if it persists.
                batch.results = {}
        finally:
            batch.done.set()
            if had_turn or batch.turn.is_set():
                self._pass_turn()
            elif self._waiting is batch:  # left before its turn (the loop is stopping)
                self._waiting = None

    def _pass_turn(self) -> None:
        """The call in flight is done: start the waiting batch, if any."""
        batch, self._waiting = self._waiting, None
        if batch is None:
            self._busy = False
        else:
            batch.turn.set()  # its leader runs it; we stay busy until it is done


def opens() -> Batcher[tuple[str, float], OpenedSession]:
    """The batcher of a store's ``open_session`` calls (args: owner, lease)."""

    async def one(pool: Any, session_id: str, args: tuple[str, float]) -> OpenedSession:
        return await open_session(pool, session_id, *args)

    return Batcher(one, open_many)


def lazy_releases() -> Batcher[tuple[str, str, int], None]:
    """The batcher of a store's ``release_lazy`` calls (args: owner, status, steps)."""

    async def one(pool: Any, session_id: str, args: tuple[str, str, int]) -> None:
        await pool.execute(RELEASE_LAZY, session_id, *args)

    return Batcher(one, release_many)

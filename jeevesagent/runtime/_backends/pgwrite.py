"""The Postgres store's journal writes: the insert statements (first writer wins; fenced
inserts check the owners in the same statement) and the coroutines that run them on the pool's
loop and report the rows that won a conflict. Kept apart from :mod:`.postgres`, which calls
:func:`insert_rows` and :func:`get_row`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._journal.backend import STREAM, Fenced, Record, Row

__all__ = [
    "NOTIFY_STREAMS",
    "STREAM_CHANNEL",
    "Key",
    "conflicts_of",
    "get_prefixed",
    "get_row",
    "insert_rows",
    "row_args",
    "rows_from",
]

#: The notice channel of streams: a batch of a running stream step's chunks, or a complete stream,
#: was journaled.
#: Apart from the signal channel, so that no signal waiter or idle worker wakes for a chunk.
STREAM_CHANNEL = "jrt_stream"

Key = tuple[str, int, str]


def rows_from(first: int) -> str:
    """The records passed as :func:`row_args` (parameters ``$first`` .. ``$first+6``), as a
    ``FROM`` item with the columns ``session_id, kind, key, value, created_at``.

    Only ``text[]`` and ``bytea`` parameters: asyncpg encodes those natively, but looks up the
    codec of ``int2[]``, ``bytea[]`` or ``float8[]`` with an introspection query the first time
    a connection meets one -- ~6 ms of the server's CPU and ~8 ms of wall time on this 2-core
    machine, paid by the writer connection's first batch and every connection's first
    ``finish``. So kinds and times travel as text (``repr`` of a float reads back exactly), and
    the values as one ``bytea`` sliced by start and length."""
    p = [f"${first + i}" for i in range(7)]
    return (
        f"(SELECT r.session_id, r.kind::int2 AS kind, r.key,"
        f" substring({p[3]}::bytea FROM r.start::int4 FOR r.len::int4) AS value,"
        f" r.created_at::float8 AS created_at"
        f" FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[4]}::text[],"
        f" {p[5]}::text[], {p[6]}::text[]) AS r(session_id, kind, key, start, len, created_at))"
    )


def row_args(records: Sequence[Record]) -> list[Any]:
    """The parameters of :func:`rows_from` for ``records``."""
    sessions: list[str] = []
    kinds: list[str] = []
    keys: list[str] = []
    starts: list[str] = []
    lengths: list[str] = []
    times: list[str] = []
    values: list[bytes] = []
    start = 1
    for session_id, kind, key, data, created_at in records:
        sessions.append(session_id)
        kinds.append(str(kind))
        keys.append(key)
        starts.append(str(start))
        lengths.append(str(len(data)))
        start += len(data)
        values.append(data)
        times.append(repr(float(created_at)))
    return [sessions, kinds, keys, b"".join(values), starts, lengths, times]


_GET = "SELECT value, created_at FROM jrt_journal WHERE session_id = $1 AND kind = $2 AND key = $3"
_PREFIXED = (
    "SELECT key, value, created_at FROM jrt_journal"
    " WHERE session_id = $1 AND kind = $2 AND left(key, length($3)) = $3"
)
NOTIFY_STREAMS = f"SELECT pg_notify('{STREAM_CHANNEL}', s) FROM unnest($1::text[]) AS s"
_INSERT_ONE = (
    "INSERT INTO jrt_journal (session_id, kind, key, value, created_at)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)
_INSERT = f"""
INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
SELECT * FROM {rows_from(1)} AS r
ON CONFLICT DO NOTHING
RETURNING session_id, kind, key
"""
# The fenced insert of one row: one statement, hence one transaction. The sub-select locks the
# session's row FOR SHARE (a concurrent claim waits for our commit; a claim that committed first
# is seen, since a locking read in READ COMMITTED rechecks `owner` on the newest row version) and
# the row is inserted only if we own the session. A plain INSERT with a semi-join: about as cheap
# for the server as an unfenced insert, where the former CTE that returned the verdict cost ~2x
# (raw asyncpg, synchronous_commit=off: ~430 vs ~820 us on a loaded 2-core machine). Nothing
# inserted (rare) is told apart by _FENCE_OR_KEPT.
_INSERT_ONE_FENCED = """
INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
SELECT $1, $2, $3, $4, $5
WHERE EXISTS (SELECT FROM jrt_sessions WHERE session_id = $1 AND owner = $6 FOR SHARE)
ON CONFLICT DO NOTHING
"""
# The same for a stream row, which wakes its session's stream readers once committed: the notice
# goes in the same statement (Postgres delivers it at the commit, and only if there is one),
# instead of a second statement and transaction (~60-100 us per stream step on this machine).
_INSERT_ONE_FENCED_NOTIFY = f"""
WITH ins AS (
    INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
    SELECT $1, $2, $3, $4, $5
    WHERE EXISTS (SELECT FROM jrt_sessions WHERE session_id = $1 AND owner = $6 FOR SHARE)
    ON CONFLICT DO NOTHING
    RETURNING session_id
)
SELECT pg_notify('{STREAM_CHANNEL}', session_id) FROM ins
"""
# After a fenced insert that inserted nothing: whether we own the session (if not, we were fenced:
# we cannot have lost and regained the claim in between), and the row kept for the key.
_FENCE_OR_KEPT = """
SELECT EXISTS (SELECT FROM jrt_sessions WHERE session_id = $1 AND owner = $4),
       j.value, j.created_at
FROM (SELECT) AS one
LEFT JOIN jrt_journal AS j ON j.session_id = $1 AND j.kind = $2 AND j.key = $3
"""
_INSERT_FENCED = f"""
WITH lock AS MATERIALIZED (
    SELECT session_id, owner FROM jrt_sessions WHERE session_id = ANY($8::text[])
    ORDER BY session_id FOR SHARE
), bad AS MATERIALIZED (
    SELECT o.session_id FROM unnest($8::text[], $9::text[]) AS o(session_id, owner)
    LEFT JOIN lock AS l USING (session_id) WHERE l.owner IS DISTINCT FROM o.owner
), ins AS (
    INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
    SELECT * FROM {rows_from(1)} AS r
    WHERE NOT EXISTS (SELECT 1 FROM bad)
    ON CONFLICT DO NOTHING
    RETURNING session_id, kind, key
)
SELECT true, session_id, NULL::int2, NULL::text FROM bad
UNION ALL SELECT false, session_id, kind, key FROM ins
"""
# A separate statement, not a CTE of the insert: a CTE reads the statement's snapshot, which
# misses a row that a concurrent transaction committed while the insert waited on it.
_SELECT_KEYS = """
SELECT j.session_id, j.kind, j.key, j.value, j.created_at
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(session_id, kind, key)
JOIN jrt_journal AS j ON j.session_id = k.session_id AND j.kind = k.kind::int2 AND j.key = k.key
"""


async def get_row(pool: Any, session_id: str, kind: int, key: str) -> Row | None:
    found = await pool.fetchrow(_GET, session_id, kind, key)
    return None if found is None else Row(found[0], found[1])


async def get_prefixed(pool: Any, session_id: str, kind: int, prefix: str) -> dict[str, Row]:
    rows = await pool.fetch(_PREFIXED, session_id, kind, prefix)
    return {r[0]: Row(r[1], r[2]) for r in rows}


async def insert_rows(
    pool: Any, records: Sequence[Record], owners: Mapping[str, str] | None = None
) -> dict[Key, Row]:
    if owners and len(records) == 1 and len(owners) == 1 and records[0].session_id in owners:
        # A sequential session's record: the fence with scalar parameters (no arrays), and for
        # a stream row its notice in the same statement.
        return await _insert_one_fenced(pool, records[0], owners[records[0].session_id])
    conflicts = await _insert_rows(pool, records, owners)
    # Stream rows (batches of chunks, complete streams) and only they wake the readers of their
    # sessions' streams, once committed: one more statement for those, none for step records.
    chunked = {r.session_id for r in records if r.kind == STREAM}
    if chunked:
        await pool.execute(NOTIFY_STREAMS, list(chunked))
    return conflicts


async def _insert_one_fenced(pool: Any, r: Record, owner: str) -> dict[Key, Row]:
    sql = _INSERT_ONE_FENCED_NOTIFY if r.kind == STREAM else _INSERT_ONE_FENCED
    status = await pool.execute(sql, *r, owner)
    if status.endswith(" 1"):
        return {}
    ours, value, created_at = await pool.fetchrow(
        _FENCE_OR_KEPT, r.session_id, r.kind, r.key, owner
    )
    if not ours:
        raise Fenced({r.session_id})
    return {} if value is None else {(r.session_id, r.kind, r.key): Row(value, created_at)}


async def _insert_rows(
    pool: Any, records: Sequence[Record], owners: Mapping[str, str] | None
) -> dict[Key, Row]:
    # `pool` is a pool or a connection: both have fetch() and execute().
    if owners:
        return await _insert_fenced(pool, records, owners)
    if len(records) == 1:
        # The common case of a sequential session: a plain one-row insert (no array encoding;
        # asyncpg does not have to introspect array types on a new connection).
        status = await pool.execute(_INSERT_ONE, *records[0])
        return {} if status.endswith(" 1") else await _kept_row(pool, records[0])
    # One statement: one round trip, and an autocommitted transaction for the whole batch.
    inserted = await pool.fetch(_INSERT, *row_args(records))
    return await conflicts_of(pool, records, inserted)


async def _kept_row(pool: Any, r: Record) -> dict[Key, Row]:
    """The row that won over ``r`` (first writer wins), as a conflict to adopt."""
    found = await pool.fetchrow(_GET, r.session_id, r.kind, r.key)
    return {} if found is None else {(r.session_id, r.kind, r.key): Row(found[0], found[1])}


async def _insert_fenced(
    pool: Any, records: Sequence[Record], owners: Mapping[str, str]
) -> dict[Key, Row]:
    result = await pool.fetch(
        _INSERT_FENCED, *row_args(records), list(owners), list(owners.values())
    )
    fenced = {r[1] for r in result if r[0]}
    if fenced:
        raise Fenced(fenced)
    return await conflicts_of(pool, records, [(r[1], r[2], r[3]) for r in result])


async def conflicts_of(
    pool: Any, records: Sequence[Record], inserted: Sequence[Any]
) -> dict[Key, Row]:
    if len(inserted) == len(records):
        return {}
    # Report the row now present for every key we did not insert -- and for keys that appear
    # twice in the batch, so both writers adopt the one value that was kept.
    new = {(r[0], r[1], r[2]) for r in inserted}
    seen: set[Key] = set()
    wanted: dict[Key, None] = {}
    for r in records:
        key = (r.session_id, r.kind, r.key)
        if key not in new or key in seen:
            wanted[key] = None
        seen.add(key)
    sessions, kinds, keys = (list(col) for col in zip(*wanted, strict=True))
    rows = await pool.fetch(_SELECT_KEYS, sessions, [str(k) for k in kinds], keys)
    return {(r[0], r[1], r[2]): Row(r[3], r[4]) for r in rows}

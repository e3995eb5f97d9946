"""The PostgreSQL store's schema -- ordered migrations (planned by :mod:`.schema`), applied
under an advisory lock -- and its retention (prune), kept apart from the hot paths in
:mod:`.postgres`."""

from __future__ import annotations

from typing import Any

from .._journal.backend import PruneResult
from .._journal.rules import PruneCandidate, select_prunable
from .schema import IMPORTED_SESSIONS, LEGACY_TABLES, Migrations, legacy_rows

__all__ = ["SCHEMA_VERSION", "_migrate", "_prune", "schema_statements"]

# The server clock, which every lease and age is measured on (shared with _postgres).
_NOW = "extract(epoch FROM clock_timestamp())::float8"

_CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS jrt_schema_version (version integer NOT NULL)"
# Version 3: copy a jeevesagent 0.9.7 journal (journal_steps / journal_streams in the search_path,
# if there) into jrt_journal under legacy keys, bytes and times unchanged, and give each imported
# session an "imported" sessions row (see .schema). The old tables stay untouched. One DO block, so
# it is harmless without the old tables (to_regclass is NULL; PL/pgSQL plans a statement only when
# it runs) and runs once even when schema_sql() is applied again (the version check).
_IMPORT_097 = (
    """
DO $jrt$
BEGIN
    IF EXISTS (SELECT 1 FROM jrt_schema_version WHERE version >= 3) THEN
        RETURN;
    END IF;"""
    + "".join(
        f"""
    IF to_regclass('{table}') IS NOT NULL THEN
        INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
        {legacy_rows(table, kind, column)}
        ON CONFLICT DO NOTHING;
    END IF;"""
        for table, kind, column in LEGACY_TABLES
    )
    + f"""
    IF {" OR ".join(f"to_regclass('{t}') IS NOT NULL" for t, _, _ in LEGACY_TABLES)} THEN
        INSERT INTO jrt_sessions
            (session_id, status, owner, lease_expires, created_at, updated_at, steps)
        {IMPORTED_SESSIONS}
        ON CONFLICT (session_id) DO NOTHING;
    END IF;
END
$jrt$
"""
)
# Ordered migrations: index i brings the schema from version i to i + 1. init_schema() applies
# the missing ones in one transaction under an advisory lock; schema_sql() lists them all.
_PG_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS jrt_journal (session_id text NOT NULL,"
        " kind smallint NOT NULL, key text NOT NULL, value bytea NOT NULL,"
        " created_at double precision NOT NULL, PRIMARY KEY (session_id, kind, key))",
    ],
    [
        "CREATE TABLE IF NOT EXISTS jrt_mailbox (id bigserial PRIMARY KEY,"
        " session_id text NOT NULL, name text NOT NULL, payload bytea NOT NULL,"
        " created_at double precision NOT NULL)",
        "CREATE INDEX IF NOT EXISTS jrt_mailbox_session_name_id"
        " ON jrt_mailbox (session_id, name, id)",
        "CREATE TABLE IF NOT EXISTS jrt_sessions (session_id text PRIMARY KEY,"
        " status text NOT NULL, owner text, lease_expires double precision,"
        " created_at double precision NOT NULL, updated_at double precision NOT NULL,"
        " steps integer NOT NULL DEFAULT 0)",
    ],
    [_IMPORT_097],
    # Version 4: workflows. A session names its workflow and keeps a cancel request; workers
    # poll the pending sessions of their workflows, oldest first, through the index. (Adding a
    # column with a constant default rewrites nothing.)
    [
        "ALTER TABLE jrt_sessions ADD COLUMN IF NOT EXISTS workflow text",
        "ALTER TABLE jrt_sessions ADD COLUMN IF NOT EXISTS cancel_requested boolean"
        " NOT NULL DEFAULT false",
        "CREATE INDEX IF NOT EXISTS jrt_sessions_work"
        " ON jrt_sessions (status, workflow, created_at, session_id)",
    ],
    # Version 5: suspension. A waiting session records the signal it waits for and when it must
    # run again; workers find the due ones through the index.
    [
        "ALTER TABLE jrt_sessions ADD COLUMN IF NOT EXISTS waiting_for text",
        "ALTER TABLE jrt_sessions ADD COLUMN IF NOT EXISTS wake_at double precision",
        "CREATE INDEX IF NOT EXISTS jrt_sessions_wake ON jrt_sessions (status, wake_at)",
    ],
]
_SCHEMA = Migrations(_PG_MIGRATIONS, "use")
SCHEMA_VERSION = _SCHEMA.version
# schema_sql() refuses a database that a newer jeevesagent has migrated past what we know.
_REFUSE_NEWER = f"""
DO $jrt$
DECLARE v integer := (SELECT max(version) FROM jrt_schema_version);
BEGIN
    IF v > {SCHEMA_VERSION} THEN
        RAISE EXCEPTION USING MESSAGE = format('the journal schema is version %s, newer than '
            || 'this jeevesagent understands (%s); upgrade jeevesagent', v, {SCHEMA_VERSION});
    END IF;
END
$jrt$
"""
# Any constant does, as long as every process uses the same one: it serialises init_schema().
_SCHEMA_LOCK_ID = 0x6A72745F736368  # b"jrt_sch"


def schema_statements() -> list[str]:
    """Every migration, each followed by its version bookkeeping; all idempotent."""
    statements = [_CREATE_VERSION_TABLE, _REFUSE_NEWER]
    for version, migration in _SCHEMA.pending(0):
        statements += migration
        statements.append(
            f"INSERT INTO jrt_schema_version (version) SELECT {version} WHERE NOT EXISTS"
            f" (SELECT 1 FROM jrt_schema_version WHERE version >= {version})"
        )
    return statements


async def _migrate(pool: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Two concurrent CREATE TABLE IF NOT EXISTS can both pass the check, and then one fails
        # on a catalog unique index; the transaction-scoped lock makes the second one wait, and
        # then read the version the first one committed.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
        await conn.execute(_CREATE_VERSION_TABLE)
        version = await conn.fetchval("SELECT max(version) FROM jrt_schema_version") or 0
        for reached, statements in _SCHEMA.pending(version):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO jrt_schema_version (version) VALUES ($1)", reached)


# Prune: one transaction (see _prune). $1 ids or NULL, $2 statuses or NULL, $3 the age cutoff
# (server clock) or NULL.
_PRUNE_NOW = f"SELECT {_NOW}"
_PRUNE_SESSIONS = """
SELECT session_id, status, owner, lease_expires, updated_at FROM jrt_sessions
WHERE ($1::text[] IS NULL OR session_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
  AND ($3::float8 IS NULL OR updated_at < $3)
ORDER BY session_id
"""
# Sessions with journal rows or signals but no sessions row: last activity is their newest row.
_PRUNE_ORPHANS = """
SELECT session_id, NULL::text, NULL::text, NULL::float8, max(created_at) FROM (
    SELECT session_id, created_at FROM jrt_journal
    WHERE $1::text[] IS NULL OR session_id = ANY($1::text[])
    UNION ALL
    SELECT session_id, created_at FROM jrt_mailbox
    WHERE $1::text[] IS NULL OR session_id = ANY($1::text[])
) AS r
WHERE NOT EXISTS (SELECT 1 FROM jrt_sessions AS s WHERE s.session_id = r.session_id)
GROUP BY session_id
HAVING $2::float8 IS NULL OR max(created_at) < $2
ORDER BY session_id
"""
# A row no one else ever sees (deleted before commit) that makes a concurrent claim wait. Rows
# are locked in session id order, like every other multi-row lock here, so prunes cannot deadlock.
_PRUNE_PLACEHOLDERS = """
INSERT INTO jrt_sessions (session_id, status, created_at, updated_at)
SELECT unnest($1::text[]), 'completed', $2, $2
ON CONFLICT (session_id) DO NOTHING
RETURNING session_id
"""
_PRUNE_DELETE = """
WITH j AS (DELETE FROM jrt_journal WHERE session_id = ANY($1::text[])),
     m AS (DELETE FROM jrt_mailbox WHERE session_id = ANY($1::text[]))
DELETE FROM jrt_sessions WHERE session_id = ANY($1::text[])
"""


async def _prune(
    pool: Any,
    older_than: float | None,
    sessions: list[str] | None,
    statuses: tuple[str, ...] | None,
    dry_run: bool,
) -> PruneResult:
    """One transaction of several statements rather than one DELETE ... RETURNING: the live-claim
    check needs every matching session, pruned or skipped, and a single statement cannot tell them
    apart while also locking sessions that have no sessions row yet.

    The matching sessions rows are locked FOR UPDATE, so a concurrent claim (an upsert of that
    row) waits for our commit, and one that committed first is seen (READ COMMITTED re-reads a
    locked row and re-checks the filters). A session with journal rows but no sessions row has
    nothing to lock: we insert a placeholder sessions row for it, which makes a concurrent claim
    wait just the same, and delete it with the rest. If a claim created the row in between, the
    placeholder conflicts and that session is looked at again, locked, like the others. A dry run
    only reads."""
    lock = "" if dry_run else " FOR UPDATE"
    ids, wanted = sessions, None if statuses is None else list(statuses)
    async with pool.acquire() as conn, conn.transaction():
        now: float = await conn.fetchval(_PRUNE_NOW)
        cutoff = None if older_than is None else now - older_than
        rows = list(await conn.fetch(_PRUNE_SESSIONS + lock, ids, wanted, cutoff))
        orphans: list[str] = []
        if statuses is None:  # sessions without a row never match a status filter
            found = await conn.fetch(_PRUNE_ORPHANS, ids, cutoff)
            orphans = [r[0] for r in found]
            if orphans and not dry_run:
                got = {r[0] for r in await conn.fetch(_PRUNE_PLACEHOLDERS, orphans, now)}
                lost = [sid for sid in orphans if sid not in got]
                if lost:  # claimed meanwhile: now they have a row to lock and check
                    rows += await conn.fetch(_PRUNE_SESSIONS + lock, lost, wanted, cutoff)
                found = [r for r in found if r[0] in got]
            rows += found
        result = select_prunable((PruneCandidate(*r) for r in rows), older_than, statuses, now)
        if result.pruned and not dry_run:
            await conn.execute(_PRUNE_DELETE, result.pruned)
    return result

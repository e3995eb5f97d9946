"""The SQLite journal store: one long-lived connection on one thread the store owns.

Why not aiosqlite: it is asyncio-only (under trio it fails with "trio.run received unrecognized
yield message <Future pending>"). A dedicated thread per store works under any anyio backend, keeps
one connection (so ``":memory:"`` works and the page cache stays warm), and ends on ``aclose()``.

Durability: WAL mode with ``synchronous=FULL``, so a committed step survives power loss; writes take
the write lock up front (``BEGIN IMMEDIATE``) so two stores on one file queue on the busy timeout
instead of failing half-way through a transaction. Writes queued on the store's thread together
(claims, releases, the group committer's batch of journal rows, signals) share one transaction
and one fsync, each in a savepoint of its own (``sqlitetx.write_batch``); each caller returns only
after that commit.

Schema: ordered migrations, recorded in ``jrt_schema_version`` and applied on open in one
``BEGIN IMMEDIATE`` transaction. Version 3 imports a jeevesagent 0.9.7 journal found in the same
file (``journal_steps`` / ``journal_streams``) under legacy (``l:``) keys and leaves the old
tables in place; drop them yourself once you have checked the import. Version 4 gives sessions
rows their workflow and cancel request, and indexes the workers' poll; version 5 what a suspended
session waits for (``waiting_for``, ``wake_at``).
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .._core.keys import describe_key
from .._core.values import MAGIC, Codec
from .._errors import ErrorMatch, StoreError, driver_error
from .._journal.backend import (
    STEP,
    JournalBackend,
    OpenedSession,
    PruneResult,
    Record,
    Row,
    SessionInfo,
    SessionJournal,
)
from . import sqlitesessions
from .schema import IMPORTED_SESSIONS, LEGACY_TABLES, Migrations, legacy_rows
from .sqlitetx import INSERT, SELECT_ONE, fence, get_row, insert_rows, one, write, write_batch
from .thread import WorkerThread

__all__ = ["SCHEMA_VERSION", "SqliteJournalStore"]

T = TypeVar("T")


def _import_097(conn: sqlite3.Connection) -> None:
    """Copy a jeevesagent 0.9.7 journal (tables ``journal_steps`` and ``journal_streams``, if
    this file has them) into ``jrt_journal`` under legacy keys (see :mod:`.schema`), value bytes
    and times unchanged, with an ``imported`` sessions row per session. The old tables stay
    untouched."""
    found = False
    for table, kind, column in LEGACY_TABLES:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        if one(conn, sql, (table,)) is not None:
            found = True
            conn.execute(
                "INSERT OR IGNORE INTO jrt_journal (session_id, kind, key, value, created_at) "
                + legacy_rows(table, kind, column)
            )
    if found:
        conn.execute(
            "INSERT OR IGNORE INTO jrt_sessions (session_id, status, owner, lease_expires,"
            " created_at, updated_at, steps) " + IMPORTED_SESSIONS
        )


# Ordered migrations: index i brings the schema from version i to i + 1. Applied on open, inside
# one BEGIN IMMEDIATE transaction, so two processes opening one file at once apply them once.
# A step is a statement or a function of the connection (for what plain SQL cannot do, such as
# reading a table only if it exists).
_MIGRATIONS: list[list[str | Callable[[sqlite3.Connection], None]]] = [
    [
        """CREATE TABLE IF NOT EXISTS jrt_journal (
            session_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (session_id, kind, key)
        ) WITHOUT ROWID""",
    ],
    [
        """CREATE TABLE IF NOT EXISTS jrt_mailbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            name TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS jrt_mailbox_queue ON jrt_mailbox (session_id, name, id)",
        """CREATE TABLE IF NOT EXISTS jrt_sessions (
            session_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            owner TEXT,
            lease_expires REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            steps INTEGER NOT NULL DEFAULT 0
        )""",
    ],
    # version 3: import a jeevesagent 0.9.7 journal found in the same file (see _import_097).
    [_import_097],
    # version 4: workflows. A session names its workflow and keeps a cancel request; workers
    # poll the pending sessions of their workflows, oldest first, through the index.
    [
        "ALTER TABLE jrt_sessions ADD COLUMN workflow TEXT",
        "ALTER TABLE jrt_sessions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS jrt_sessions_work"
        " ON jrt_sessions (status, workflow, created_at, session_id)",
    ],
    # version 5: suspension. A waiting session records the signal it waits for and when it
    # must run again; workers find the due ones through the index.
    [
        "ALTER TABLE jrt_sessions ADD COLUMN waiting_for TEXT",
        "ALTER TABLE jrt_sessions ADD COLUMN wake_at REAL",
        "CREATE INDEX IF NOT EXISTS jrt_sessions_wake ON jrt_sessions (status, wake_at)",
    ],
]
_SCHEMA = Migrations(_MIGRATIONS, "open")
SCHEMA_VERSION = _SCHEMA.version

_SELECT_SESSION = "SELECT kind, key, value, created_at FROM jrt_journal WHERE session_id = ?"
_SELECT_PREFIXED = (
    "SELECT key, value, created_at FROM jrt_journal"
    " WHERE session_id = ? AND kind = ? AND substr(key, 1, ?) = ?"
)


def _open(path: str, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if path != ":memory:":
            _enable_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite reports "database is locked"
    # at once, without its busy handler, when another connection is doing the same. Retry for up
    # to the busy timeout (this runs on the store's own thread, never on the event loop).
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = one(conn, "PRAGMA journal_mode")[0]
            if str(mode).lower() != "wal":
                mode = one(conn, "PRAGMA journal_mode = WAL")[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode!r})")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection) -> None:
    with write(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS jrt_schema_version (version INTEGER NOT NULL)")
        row = one(conn, "SELECT max(version) FROM jrt_schema_version")
        for reached, steps in _SCHEMA.pending(row[0] or 0):
            for ddl in steps:
                if isinstance(ddl, str):
                    conn.execute(ddl)
                else:
                    ddl(conn)
            conn.execute("INSERT INTO jrt_schema_version VALUES (?)", (reached,))


def _load(conn: sqlite3.Connection, session_id: str) -> SessionJournal:
    steps: dict[str, Row] = {}
    streams: dict[str, Row] = {}
    for kind, key, value, created_at in conn.execute(_SELECT_SESSION, (session_id,)):
        (steps if kind == STEP else streams)[key] = Row(value, created_at)
    return SessionJournal(steps, streams)


def _open_session(
    conn: sqlite3.Connection, session_id: str, owner: str, lease: float
) -> OpenedSession:
    """The claim, and if granted the journal and the names of the signals waiting: one
    transaction, committed without waiting for an fsync (see :func:`sqlitesessions.lazily`)."""
    with sqlitesessions.lazily(conn), write(conn):
        info = sqlitesessions.claim_in(conn, session_id, owner, lease)
        if info.owner != owner:
            return OpenedSession(info, None, [])
        return OpenedSession(info, _load(conn, session_id), _pending_names(conn, session_id))


def _prefixed(conn: sqlite3.Connection, session_id: str, kind: int, prefix: str) -> dict[str, Row]:
    rows = conn.execute(_SELECT_PREFIXED, (session_id, kind, len(prefix), prefix))
    return {key: Row(value, created_at) for key, value, created_at in rows}


def _insert(
    conn: sqlite3.Connection, records: Sequence[Record], owners: Mapping[str, str] | None = None
) -> dict[tuple[str, int, str], Row]:
    conflicts: dict[tuple[str, int, str], Row] = {}
    with write(conn):
        fence(conn, owners)
        before = conn.total_changes
        insert_rows(conn, records)
        if conn.total_changes - before != len(records):
            # Some keys were already recorded (by another store on this file, or a duplicate in
            # the batch): report what was there first, which is what everyone must see.
            for r in records:
                row = one(conn, SELECT_ONE, (r.session_id, r.kind, r.key))
                if row is not None and (row[0] != r.data or row[1] != r.created_at):
                    conflicts[(r.session_id, r.kind, r.key)] = Row(row[0], row[1])
    return conflicts


def _finish(
    conn: sqlite3.Connection,
    session_id: str,
    owner: str,
    records: Sequence[Record],
    status: str,
    steps: int,
) -> dict[tuple[str, int, str], Row]:
    """A session's outcome rows and its release, in one (durable) transaction: fenced, so an
    owner that lost the claim writes neither."""
    with write(conn):
        conflicts = _insert(conn, records, {session_id: owner})
        sqlitesessions.release(conn, session_id, owner, status, steps)
    return conflicts


def _send_signal(
    conn: sqlite3.Connection, session_id: str, name: str, data: bytes, created_at: float
) -> None:
    conn.execute(
        "INSERT INTO jrt_mailbox (session_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
        (session_id, name, data, created_at),
    )


def _take_signal(
    conn: sqlite3.Connection, session_id: str, name: str, key: str | None, owner: str | None
) -> Row | None:
    with write(conn):
        if key is not None:
            done = one(conn, SELECT_ONE, (session_id, STEP, key))
            if done is not None:
                return Row(done[0], done[1])
        signal = one(
            conn,
            "SELECT id, payload FROM jrt_mailbox WHERE session_id = ? AND name = ? "
            "ORDER BY id LIMIT 1",
            (session_id, name),
        )
        if signal is None:
            return None
        if key is not None and owner is not None:
            fence(conn, {session_id: owner})
        conn.execute("DELETE FROM jrt_mailbox WHERE id = ?", (signal[0],))
        row = Row(signal[1], time.time())
        if key is not None:
            conn.execute(INSERT, (session_id, STEP, key, row.data, row.created_at))
        return row


def _pending_names(conn: sqlite3.Connection, session_id: str) -> list[str]:
    sql = "SELECT DISTINCT name FROM jrt_mailbox WHERE session_id = ? ORDER BY name"
    return [row[0] for row in conn.execute(sql, (session_id,))]


def _pending_signals(conn: sqlite3.Connection, session_id: str) -> int:
    return int(one(conn, "SELECT count(*) FROM jrt_mailbox WHERE session_id = ?", (session_id,))[0])


def _count_signed(conn: sqlite3.Connection, session_id: str, sample: int) -> tuple[int, int]:
    sql = f"""
        SELECT coalesce(sum(substr(v, 1, {len(MAGIC)}) = :magic), 0),
               coalesce(sum(substr(v, 1, {len(MAGIC)}) <> :magic), 0)
        FROM (SELECT value AS v FROM jrt_journal WHERE session_id = :sid
              UNION ALL SELECT * FROM (SELECT value FROM jrt_journal LIMIT :n)
              UNION ALL SELECT * FROM (SELECT payload FROM jrt_mailbox LIMIT :n))"""
    params = {"sid": session_id, "magic": MAGIC, "n": sample}
    signed, unsigned = one(conn, sql, params)
    return int(signed), int(unsigned)


# The SQLite store's mapping for driver_error: what to do about each kind of failure.
_SQLITE_HINTS: tuple[tuple[ErrorMatch, str], ...] = (
    (
        lambda exc: "locked" in str(exc) or "busy" in str(exc),
        "another connection held the write lock longer than the busy timeout; "
        "retry, or raise busy_timeout",
    ),
    (
        (sqlite3.OperationalError, sqlite3.IntegrityError),
        "check that the path is writable and the disk is not full",
    ),
    (sqlite3.DatabaseError, "the file may not be a jeevesagent journal, or is damaged"),
)


def _step(key: str | None) -> str | None:
    return describe_key(key) if key else None


class SqliteJournalStore(JournalBackend):
    """A journal in one SQLite file (WAL, ``synchronous=FULL``): the embedded default.

    :param path: the database file; parent folders are created. ``":memory:"`` keeps the journal
        in this store's connection only.
    :param busy_timeout: seconds a write waits for another connection's lock before failing
    :param codec: how values are stored: ``"pickle"`` (default; anything picklable), ``"json"``
        (plain JSON text other tools can read; values must be JSON data), or a codec object
    :param signing_key: if given (or set in ``JEEVESAGENT_SIGNING_KEY``), every row is signed
        and a row that does not carry this key's signature is refused without being decoded
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
    ) -> None:
        super().__init__(codec=codec, signing_key=signing_key)
        raw = os.fspath(path)
        self.path = pathlib.Path(raw)
        if raw != ":memory:":
            self.path = self.path.expanduser()
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = raw if raw == ":memory:" else str(self.path)
        self._worker: WorkerThread[sqlite3.Connection] = WorkerThread(
            f"jeevesagent-sqlite:{self.path.name}",
            lambda: _open(target, busy_timeout),
            lambda conn: conn.close(),
            write_batch,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqliteJournalStore path={str(self.path)!r} {state}>"

    async def _call(
        self,
        fn: Callable[..., T],
        *args: Any,
        session_id: str | None = None,
        key: str | None = None,
        batched: bool = False,
        lazy: bool = False,
    ) -> T:
        """Run ``fn(conn, *args)`` on the store's thread. ``key``: the journal key the call is
        about, named (as a step, see ``describe_key``) only in an error. ``batched``: a write
        that may share one transaction (one fsync) with the other writes queued with it (see
        ``write_batch``); ``lazy``: a batched write that need not be durable (see
        ``sqlitesessions.lazily``)."""
        if self._closed:
            self.check_open(session_id, _step(key))
        try:
            return await self._worker.run(fn, *args, batched=batched, lazy=lazy)
        except anyio.ClosedResourceError:  # closed by aclose() since the check above
            self.check_open(session_id, _step(key))
            raise
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc, session_id, _step(key)) from exc

    def _failed(
        self, exc: sqlite3.DatabaseError, session_id: str | None, step: str | None
    ) -> StoreError:
        where = f"session {session_id!r}, step {step!r}: " if session_id else ""
        failed = f"{where}SQLite journal {str(self.path)!r} failed: {type(exc).__name__}: {exc}"

        def message(hint: str) -> str:
            return f"{failed} ({hint}). Nothing was recorded by this call."

        return driver_error(exc, _SQLITE_HINTS, message, session_id=session_id, step=step)

    async def read_session(self, session_id: str) -> SessionJournal:
        return await self._call(_load, session_id, session_id=session_id)

    # write_rows waits for its thread uncancellably: no shield of the committer's around it.
    write_rows_shielded = True

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        first = records[0] if records else None
        return await self._call(
            _insert,
            records,
            owners,
            session_id=first.session_id if first else None,
            key=first.key if first else None,
            batched=True,
        )

    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        await self._call(
            _send_signal, session_id, name, data, created_at, session_id=session_id, batched=True
        )

    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        return await self._call(
            _take_signal,
            session_id,
            name,
            key,
            owner,
            session_id=session_id,
            key=key,
            batched=True,
        )

    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        return await self._call(
            sqlitesessions.claim, session_id, owner, lease, session_id=session_id, batched=True
        )

    async def open_session(self, session_id: str, owner: str, lease: float) -> OpenedSession:
        return await self._call(
            _open_session, session_id, owner, lease, session_id=session_id, batched=True, lazy=True
        )

    async def release_lazy(self, session_id: str, owner: str, status: str, steps: int) -> None:
        await self._call(
            sqlitesessions.release_lazy,
            session_id,
            owner,
            status,
            steps,
            session_id=session_id,
            batched=True,
            lazy=True,
        )

    async def finish(
        self, session_id: str, owner: str, records: Sequence[Record], status: str, steps: int
    ) -> dict[tuple[str, int, str], Row]:
        return await self._call(
            _finish,
            session_id,
            owner,
            records,
            status,
            steps,
            session_id=session_id,
            key=records[0].key if records else None,
            batched=True,
        )

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        return await self._call(
            sqlitesessions.renew, session_id, owner, lease, session_id=session_id, batched=True
        )

    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        await self._call(
            sqlitesessions.release,
            session_id,
            owner,
            status,
            steps,
            session_id=session_id,
            batched=True,
        )

    async def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        return await self._call(
            sqlitesessions.suspend,
            session_id,
            owner,
            waiting_for,
            wake_at,
            steps,
            session_id=session_id,
            batched=True,
        )

    async def resumable(
        self, workflows: Sequence[str], limit: int | None = None
    ) -> list[SessionInfo]:
        return await self._call(sqlitesessions.resumable, list(workflows), limit)

    async def wake_in(self, workflows: Sequence[str]) -> float | None:
        return await self._call(sqlitesessions.wake_in, list(workflows))

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        names = None if workflows is None else list(workflows)
        return await self._call(sqlitesessions.list_sessions, status, names, limit)

    async def create_session(
        self,
        session_id: str,
        workflow: str,
        arguments: Record,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> tuple[SessionInfo, Row | None]:
        return await self._call(
            sqlitesessions.create_session,
            session_id,
            workflow,
            arguments,
            owner,
            lease,
            session_id=session_id,
            key=arguments.key,
            batched=True,
        )

    async def request_cancel(self, session_id: str) -> SessionInfo | None:
        return await self._call(
            sqlitesessions.request_cancel, session_id, session_id=session_id, batched=True
        )

    async def pending_names(self, session_id: str) -> list[str]:
        return await self._call(_pending_names, session_id, session_id=session_id)

    async def pending_signals(self, session_id: str) -> int:
        return await self._call(_pending_signals, session_id, session_id=session_id)

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        return await self._call(sqlitesessions.prune, older_than, sessions, statuses, dry_run)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        return await self._call(sqlitesessions.session_row, session_id, session_id=session_id)

    async def count_signed(self, session_id: str, sample: int = 100) -> tuple[int, int]:
        return await self._call(_count_signed, session_id, sample, session_id=session_id)

    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        return await self._call(get_row, session_id, kind, key, session_id=session_id, key=key)

    async def read_prefixed(self, session_id: str, kind: int, prefix: str) -> dict[str, Row]:
        return await self._call(_prefixed, session_id, kind, prefix, session_id=session_id)

    async def close_resources(self) -> None:
        await self._worker.aclose()

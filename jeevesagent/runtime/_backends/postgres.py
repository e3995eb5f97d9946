"""The PostgreSQL journal store (asyncpg), usable from asyncio and trio.

One table holds every record, keyed by ``(session_id, kind, key)``; a record is never replaced
(``ON CONFLICT DO NOTHING``: the first writer wins, and the others are told what was recorded).
Each primitive is one statement, so a batch of records costs one round trip and commits as one
transaction.

Two more tables coordinate workers: ``jrt_mailbox`` keeps signals sent to sessions (a
``pg_notify('jrt_signal', session_id)`` in the sending transaction wakes listeners anywhere), and
``jrt_sessions`` records who runs a session (owner and lease), its workflow, and how it last
ended (creating, cancelling and releasing a session notify on the same channel). Every lease
is measured on the database server's clock (``clock_timestamp()``), never a worker's, since
workers on many hosts share one database. A write on behalf of an owner is fenced: the sessions
rows are locked ``FOR SHARE`` in the writing statement itself, so a concurrent claim cannot slip in
between the check and the write.

asyncpg only runs on asyncio. Under trio the store talks to asyncpg through an asyncio loop on a
thread of its own (:class:`_AsyncioBridge`) -- except for journal writes, one per step, which a
store made by :meth:`PostgresJournalStore.connect` sends over a libpq connection driven in the
caller's own loop (:mod:`.pgnative`), with no thread hop (on asyncio too, where it is cheaper
than asyncpg's write). The drivers are imported only when a store is
made, so ``import jeevesagent.runtime`` works without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .._core.keys import describe_key
from .._core.values import MAGIC, Codec, JournalCodec
from .._journal.backend import (
    SESSION_STATUSES,
    STEP,
    Fenced,
    JournalBackend,
    OpenedSession,
    PruneResult,
    Record,
    Row,
    SessionInfo,
    SessionJournal,
)
from . import pgsessions, pgsignals
from .pgbridge import AsyncFn, _AsyncioBridge, require_asyncpg
from .pgerrors import call_translated, driver_errors, store_error
from .pglisten import Listener
from .pgnative import NativeWriter, libpq_available, libpq_conninfo
from .pgopen import lazy_releases, opens
from .pgschema import _NOW, _migrate, _prune, schema_statements
from .pgwrite import STREAM_CHANNEL, Key, get_prefixed, get_row, insert_rows
from .thread import LoopHandle

__all__ = ["PostgresJournalStore"]

T = TypeVar("T")

# How long closing waits for connections still in use before asyncpg terminates them.
_CLOSE_TIMEOUT = 10.0

_LOAD = "SELECT kind, key, value, created_at FROM jrt_journal WHERE session_id = $1"
_CLOCK = f"SELECT {_NOW}"
# The signing sample (see JournalBackend.count_signed): $1 session, $2 the signature's magic
# prefix, $3 the sample size.
_COUNT_SIGNED = f"""
SELECT count(*) FILTER (WHERE substr(v, 1, {len(MAGIC)}) = $2),
       count(*) FILTER (WHERE substr(v, 1, {len(MAGIC)}) <> $2)
FROM ((SELECT value AS v FROM jrt_journal WHERE session_id = $1)
      UNION ALL (SELECT value FROM jrt_journal LIMIT $3)
      UNION ALL (SELECT payload FROM jrt_mailbox LIMIT $3)) AS r"""
_SCHEMA_READY = (
    "SELECT current_schema(), to_regclass('jrt_journal') IS NOT NULL AND "
    "to_regclass('jrt_mailbox') IS NOT NULL AND to_regclass('jrt_sessions') IS NOT NULL"
)


class PostgresJournalStore(JournalBackend):
    """A journal in PostgreSQL, shared by many workers on many hosts.

    Make one with ``await PostgresJournalStore.connect(dsn)``, or pass an asyncpg pool you
    manage. Call :meth:`init_schema` once per database (it is idempotent), or apply
    :meth:`schema_sql` with your migration tool. Table names are unqualified, so the connection's
    ``search_path`` chooses the schema (``dsn + "?search_path=myschema"`` with asyncpg).

    Works under asyncio and trio alike; under trio, asyncpg runs on an asyncio loop in a thread
    of the store's own, stopped by :meth:`aclose`. A store made by :meth:`connect` sends its
    journal writes over a libpq connection in the caller's own loop instead (``libpq_writes``).

    ``aclose()`` closes the pool only when the store created it (``connect``); a pool you pass
    in stays yours to close, since other code may share it.

    Notices (:meth:`watch`: signals sent, sessions created, cancelled or released) come over one
    dedicated connection (``LISTEN jrt_signal``), opened on first use with the pool's connection
    arguments, outside the pool. If that
    connection is lost, a warning is logged and the store reopens it (with backoff, until it is
    back or the store is closed); waiters meanwhile poll the mailbox, and once it is back every
    session with a signal waiting is woken, so a notice lost in between delays nothing further.
    The channel is database-wide: stores on other schemas of the same database cause harmless
    spurious wakes.
    """

    def __init__(
        self,
        pool: Any,
        *,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        _connected: _AsyncioBridge | None = None,
        _native: NativeWriter | None = None,
    ) -> None:
        """``codec`` and ``signing_key``: see :class:`SqliteJournalStore`. (``_connected`` and
        ``_native`` are :meth:`connect`'s: the bridge it made ``pool`` on, handed over with the
        pool, and the libpq connection for writes it opened.)"""
        super().__init__(codec=codec, signing_key=signing_key)
        self._pool = pool
        # A pool is driven on the asyncio loop it was created on (asyncpg keeps it as _loop).
        # A pool passed in stays its maker's; one that connect() made is the store's to close.
        self._bridge = _connected if _connected is not None else _AsyncioBridge(pool._loop)
        self._owns_pool = _connected is not None
        # Group commit makes exactly one write at a time, so writes keep one connection of the
        # pool for themselves instead of acquiring one per commit (which costs about as much as
        # the insert on a small machine). Not with a pool of one: reads would starve.
        self._writer: Any = None
        # Made by connect(): writes over libpq in the caller's loop instead of through asyncpg.
        self._native = _native
        # Overlapping session opens, and lazy releases, share statements (see pgopen).
        self._opens = opens()
        self._releases = lazy_releases()
        self._listener = Listener(pool)  # signal notices: the LISTEN connection
        self._stream_listener = Listener(pool, STREAM_CHANNEL)  # opened by the first reader

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        pool = "owned" if self._owns_pool else "borrowed"
        via = " via=asyncio-thread" if self._bridge.owns_thread else ""
        writes = " writes=libpq" if self._native is not None else ""
        return f"<PostgresJournalStore {state} pool={pool}{via}{writes}>"

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        libpq_writes: bool | None = None,
    ) -> PostgresJournalStore:
        """Open a connection pool to ``dsn``; the store owns it and closes it in ``aclose()``.
        ``codec`` and ``signing_key``: see :class:`SqliteJournalStore`.

        ``libpq_writes``: journal writes (one per recorded step) over a connection of their own
        through libpq (psycopg's ``psycopg.pq``, in the ``postgres`` extra), driven in the
        caller's event loop. ``None`` (the default): when psycopg is installed (on asyncio, not
        on Windows). Through asyncpg instead, a write under trio hops to asyncpg's thread and
        back, and on asyncio a recorded stream costs ~1.3x as much (``benchmarks/RESULTS.md``).
        ``True``: always (psycopg required); ``False``: never. The connection uses ``dsn``;
        asyncpg's server settings in it (``?search_path=myschema``) become libpq ``options``.

        :raises ImportError: the asyncpg driver is not installed (the ``postgres`` extra), or
            ``libpq_writes=True`` and psycopg is not"""
        require_asyncpg()
        JournalCodec(codec, signing_key)  # a bad key fails here, before anything is opened
        if libpq_writes and not libpq_available():
            raise ImportError(
                "PostgresJournalStore.connect(libpq_writes=True) needs psycopg 3 with a libpq: "
                'install it with `pip install "jeevesagent[postgres]"`, or pass '
                "libpq_writes=None to write through asyncpg",
                name="psycopg",
            )
        loop = LoopHandle().asyncio_loop
        # On trio, asyncpg gets an asyncio loop in a thread of the store's own.
        bridge = _AsyncioBridge(loop) if loop is not None else _AsyncioBridge.start()
        try:
            connecting = lambda: _create_pool(dsn, min_size, max_size)  # noqa: E731
            pool = await call_translated(bridge, None, connecting, "connecting to PostgreSQL")
        except BaseException:
            await bridge.aclose()
            raise
        native = None
        default = loop is None or sys.platform != "win32"  # no add_reader on asyncio's Proactor
        if libpq_writes or (libpq_writes is None and default and libpq_available()):
            native = NativeWriter(libpq_conninfo(dsn))
            try:
                try:
                    await native.connect()  # a DSN libpq cannot use fails here, not mid-session
                except driver_errors() as exc:
                    action = "connecting to PostgreSQL over libpq"
                    raise store_error(exc, action, None, None) from exc
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await call_translated(bridge, None, lambda: _close_pool(pool), "closing")
                    await bridge.aclose()
                raise
        return cls(pool, codec=codec, signing_key=signing_key, _connected=bridge, _native=native)

    @staticmethod
    def schema_sql() -> list[str]:
        """The journal's schema, as statements to run in order (for your migration tool).

        Every statement is idempotent: applying the list again, or to a database at any older
        version, brings it to the current version (rows of ``jrt_schema_version`` record each
        version reached). A database at a newer version than this code knows makes the second
        statement fail. Version 3 imports a jeevesagent 0.9.7 journal found in the search path;
        version 4 adds the sessions' workflow and cancel request, and the workers' index.
        """
        return schema_statements()

    async def init_schema(self) -> None:
        """Bring the schema to the current version: create the tables, apply the migrations the
        database lacks (importing a jeevesagent 0.9.7 journal found in the search path), in one
        transaction. Idempotent, and safe when several processes do it at once.

        :raises JournalCorruptError: the database was migrated by a newer jeevesagent
        """
        self.check_open()
        # Not shielded: cancelling rolls the DDL transaction back, and running it again is safe.
        await self._run(lambda: _migrate(self._pool), "creating the schema")

    async def schema_ready(self) -> tuple[str, bool]:
        """Whether this database has the journal's tables where the store looks for them: the
        connection's current schema, and whether ``jrt_journal``, ``jrt_mailbox`` and
        ``jrt_sessions`` all resolve on its ``search_path``. Reads only (see :meth:`init_schema`
        to create them)."""
        self.check_open()
        schema, ready = await self._run(
            lambda: self._pool.fetchrow(_SCHEMA_READY), "checking the tables"
        )
        return schema, bool(ready)

    async def _run(
        self,
        fn: AsyncFn[T],
        action: str,
        session_id: str | None = None,
        step: str | None = None,
        *,
        shield: bool = False,
    ) -> T:
        self.check_open(session_id, step)  # close_resources() calls the bridge directly
        return await call_translated(
            self._bridge, self._pool, fn, action, session_id, step, shield=shield
        )

    # -- primitives -------------------------------------------------------------------------------
    async def read_session(self, session_id: str) -> SessionJournal:
        return await self._run(lambda: _load_rows(self._pool, session_id), "loading", session_id)

    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        return await self._run(
            lambda: get_row(self._pool, session_id, kind, key),
            "reading",
            session_id,
            describe_key(key),
        )

    # write_rows shields its own wait (both paths): no shield of the committer's around it.
    write_rows_shielded = True

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[Key, Row]:
        if not records:
            return {}
        if self._native is not None:
            if self._closed:
                self.check_open(*_named(records))
            try:
                # Shielded, like the bridge's call below.
                with anyio.CancelScope(shield=True):
                    return await insert_rows(self._native, records, owners)
            except driver_errors() as exc:
                raise store_error(exc, "recording", *_named(records)) from exc
        session_id, step = _named(records)
        # Shielded: a caller must never walk away not knowing whether its commit happened.
        return await self._run(
            lambda: self._write_rows(records, owners), "recording", session_id, step, shield=True
        )

    async def _write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None
    ) -> dict[Key, Row]:
        """On the pool's loop: insert through the held writer connection."""
        if self._pool.get_max_size() < 2:
            return await insert_rows(self._pool, records, owners)
        if self._writer is not None and not _usable(self._writer):
            # The server ended it (restart, failover, idle timeout): asyncpg has already given
            # it back to the pool and detached our proxy.
            self._writer = None
        if self._writer is None:
            self._writer = await self._pool.acquire()
        try:
            return await insert_rows(self._writer, records, owners)
        except Fenced:
            raise  # the connection is fine: the statement just inserted nothing
        except BaseException:
            # Whatever went wrong, do not reuse a connection in an unknown state.
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                await self._pool.release(writer)
            raise

    async def _release_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(writer)

    # -- mailbox and sessions table ---------------------------------------------------------------
    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        # One autocommitted statement: the row and the notice commit together. Shielded like
        # every write: the caller must know whether the signal was sent.
        await self._run(
            lambda: self._pool.execute(pgsignals.SEND, session_id, name, data, created_at),
            "sending a signal",
            session_id,
            name,
            shield=True,
        )

    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        return await self._run(
            lambda: pgsignals.take(self._pool, session_id, name, key, owner),
            "receiving a signal",
            session_id,
            describe_key(key) if key else None,
            shield=True,
        )

    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        return await self._run(
            lambda: pgsessions.claim(self._pool, session_id, owner, lease),
            "claiming the session",
            session_id,
            shield=True,
        )

    async def open_session(self, session_id: str, owner: str, lease: float) -> OpenedSession:
        return await self._run(
            lambda: self._opens.call(self._pool, session_id, (owner, float(lease))),
            "opening the session",
            session_id,
            shield=True,
        )

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        status: str = await self._run(
            lambda: self._pool.execute(pgsessions.RENEW, session_id, owner, float(lease)),
            "renewing the session's lease",
            session_id,
            shield=True,
        )
        return status == "UPDATE 1"

    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        if status not in SESSION_STATUSES:
            raise ValueError(f"unknown session status {status!r}; one of {SESSION_STATUSES}")
        await self._run(
            lambda: self._pool.execute(pgsessions.RELEASE, session_id, owner, status, steps),
            "releasing the session",
            session_id,
            shield=True,
        )

    async def release_lazy(self, session_id: str, owner: str, status: str, steps: int) -> None:
        if status not in SESSION_STATUSES:
            raise ValueError(f"unknown session status {status!r}; one of {SESSION_STATUSES}")
        await self._run(
            lambda: self._releases.call(self._pool, session_id, (owner, status, steps)),
            "releasing the session",
            session_id,
            shield=True,
        )

    async def finish(
        self, session_id: str, owner: str, records: Sequence[Record], status: str, steps: int
    ) -> dict[Key, Row]:
        return await self._run(
            lambda: pgsessions.finish(self._pool, session_id, owner, records, status, steps),
            "ending the session",
            session_id,
            shield=True,
        )

    async def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        return await self._run(
            lambda: pgsessions.suspend(self._pool, session_id, owner, waiting_for, wake_at, steps),
            "suspending the session",
            session_id,
            shield=True,
        )

    async def resumable(
        self, workflows: Sequence[str], limit: int | None = None
    ) -> list[SessionInfo]:
        return await self._run(
            lambda: pgsessions.resumable(self._pool, workflows, limit), "listing sessions"
        )

    async def wake_in(self, workflows: Sequence[str]) -> float | None:
        return await self._run(
            lambda: pgsessions.wake_in(self._pool, workflows), "listing sessions"
        )

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        return await self._run(
            lambda: pgsessions.list_sessions(self._pool, status, workflows, limit),
            "listing sessions",
        )

    async def create_session(
        self,
        session_id: str,
        workflow: str,
        arguments: Record,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> tuple[SessionInfo, Row | None]:
        return await self._run(
            lambda: pgsessions.create_session(
                self._pool, session_id, workflow, arguments, owner, lease
            ),
            "creating the session",
            session_id,
            describe_key(arguments.key),
            shield=True,
        )

    async def request_cancel(self, session_id: str) -> SessionInfo | None:
        return await self._run(
            lambda: pgsessions.request_cancel(self._pool, session_id),
            "cancelling the session",
            session_id,
            shield=True,
        )

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        return await self._run(
            lambda: _prune(self._pool, older_than, sessions, statuses, dry_run),
            "pruning sessions",
            shield=True,
        )

    async def session_info(self, session_id: str) -> SessionInfo | None:
        self.check_open(session_id)
        row = await self._run(
            lambda: self._pool.fetchrow(pgsessions.SESSION, session_id),
            "reading the session",
            session_id,
        )
        return None if row is None else SessionInfo(*row)

    async def count_signed(self, session_id: str, sample: int = 100) -> tuple[int, int]:
        self.check_open(session_id)
        row = await self._run(
            lambda: self._pool.fetchrow(_COUNT_SIGNED, session_id, MAGIC, sample),
            "sampling rows",
            session_id,
        )
        return int(row[0]), int(row[1])

    async def pending_signals(self, session_id: str) -> int:
        n: int = await self._run(
            lambda: self._pool.fetchval(pgsignals.PENDING, session_id),
            "counting signals",
            session_id,
        )
        return n

    async def pending_names(self, session_id: str) -> list[str]:
        rows = await self._run(
            lambda: self._pool.fetch(pgsignals.PENDING_NAMES, session_id),
            "listing signals",
            session_id,
        )
        return [row[0] for row in rows]

    async def now(self) -> float:
        now: float = await self._run(lambda: self._pool.fetchval(_CLOCK), "reading the clock")
        return now

    async def watch(self, wake: Callable[[str], None]) -> bool:
        """Have ``wake(session_id)`` called, in the caller's event loop, for every signal sent
        and every session created, cancelled or released.

        ``True`` while notices arrive. The first call opens the LISTEN connection; later calls
        cost no round trip, and answer ``False`` while a lost connection is being reopened.
        """
        self.check_open()
        listener = self._listener
        if listener.registered(wake) and (listener.pushing or listener.reopening):
            return listener.pushing
        token = LoopHandle()
        return await self._run(lambda: listener.watch(wake, token), "listening for signals")

    async def read_prefixed(self, session_id: str, kind: int, prefix: str) -> dict[str, Row]:
        return await self._run(
            lambda: get_prefixed(self._pool, session_id, kind, prefix), "reading", session_id
        )

    async def watch_streams(self, wake: Callable[[str], None]) -> bool:
        """Have ``wake(session_id)`` called for every stream row journaled (``LISTEN
        jrt_stream``, a connection of its own opened by the first stream reader)."""
        self.check_open()
        listener = self._stream_listener
        if listener.registered(wake) and (listener.pushing or listener.reopening):
            return listener.pushing
        token = LoopHandle()
        return await self._run(lambda: listener.watch(wake, token), "listening for streams")

    async def close_resources(self) -> None:
        with anyio.CancelScope(shield=True):
            run = functools.partial(call_translated, self._bridge, self._pool)
            try:
                if self._native is not None:
                    self._native.close()
                if self._listener.active:
                    await run(self._listener.aclose, "closing the LISTEN connection")
                if self._stream_listener.active:
                    await run(self._stream_listener.aclose, "closing the LISTEN connection")
                if self._writer is not None:
                    await run(self._release_writer, "releasing the writer connection")
                if self._owns_pool:
                    await run(lambda: _close_pool(self._pool), "closing the pool")
            finally:
                await self._bridge.aclose()


# -- driver side: these coroutines run on the pool's asyncio loop ---------------------------------
async def _create_pool(dsn: str, min_size: int, max_size: int) -> Any:
    import asyncpg

    # reset=_keep: asyncpg's default reset runs a query (RESET ALL; UNLISTEN *; ...) every time a
    # connection returns to the pool -- a second round trip per journal write. The store changes
    # no session state (its transactions are scoped, its advisory locks transaction-level), and
    # asyncpg still rolls back an open transaction on release, so that reset buys nothing here.
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep)


async def _keep(connection: Any) -> None:
    return None


async def _close_pool(pool: Any) -> None:
    # On timeout asyncpg terminates the connections still in use; that is all we want.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)


async def _load_rows(pool: Any, session_id: str) -> SessionJournal:
    journal = SessionJournal({}, {})
    for kind, key, value, created_at in await pool.fetch(_LOAD, session_id):
        (journal.steps if kind == STEP else journal.streams)[key] = Row(value, created_at)
    return journal


def _named(records: Sequence[Record]) -> tuple[str | None, str | None]:
    """The session and step an error about writing ``records`` names: a batch may span sessions
    (group commit), so each only if it is the only one."""
    session_id = records[0].session_id
    if any(r.session_id != session_id for r in records):
        return None, None
    return session_id, describe_key(records[0].key) if len(records) == 1 else None


def _usable(conn: Any) -> bool:
    try:
        return not conn.is_closed()
    except Exception:  # a released pool proxy raises InterfaceError on any call
        return False

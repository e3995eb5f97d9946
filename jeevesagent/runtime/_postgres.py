"""The PostgreSQL journal store (asyncpg), usable from asyncio and trio.

One table holds every record, keyed by ``(session_id, kind, key)``; a record is never replaced
(``ON CONFLICT DO NOTHING``: the first writer wins, and the others are told what was recorded).
Each primitive is one statement, so a batch of records costs one round trip and commits as one
transaction.

asyncpg only runs on asyncio. Under trio the store talks to asyncpg through an asyncio loop on a
thread of its own (:class:`_AsyncioBridge`). asyncpg itself is imported only when a store is made,
so ``import jeevesagent.runtime`` works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

from ._errors import StoreClosedError, StoreError
from ._store import STEP, NativeStore, Record, Row, SessionJournal
from ._thread import call_soon_in_loop

__all__ = ["PostgresJournalStore"]

T = TypeVar("T")
Key = tuple[str, int, str]
AsyncFn = Callable[[], Coroutine[Any, Any, T]]

SCHEMA_VERSION = 1
# Any constant does, as long as every process uses the same one: it serialises init_schema().
_SCHEMA_LOCK_ID = 0x6A72745F736368  # b"jrt_sch"
# How long closing waits for connections still in use before asyncpg terminates them.
_CLOSE_TIMEOUT = 10.0

_LOAD = "SELECT kind, key, value, created_at FROM jrt_journal WHERE session_id = $1"
_GET = "SELECT value, created_at FROM jrt_journal WHERE session_id = $1 AND kind = $2 AND key = $3"
_INSERT_ONE = (
    "INSERT INTO jrt_journal (session_id, kind, key, value, created_at)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)
_INSERT = """
INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::bytea[], $5::float8[])
ON CONFLICT DO NOTHING
RETURNING session_id, kind, key
"""
# A separate statement, not a CTE of the insert: a CTE reads the statement's snapshot, which
# misses a row that a concurrent transaction committed while the insert waited on it.
_SELECT_KEYS = """
SELECT j.session_id, j.kind, j.key, j.value, j.created_at
FROM unnest($1::text[], $2::int2[], $3::text[]) AS k(session_id, kind, key)
JOIN jrt_journal AS j USING (session_id, kind, key)
"""


class _AsyncioBridge:
    """Runs async functions on the asyncio loop an asyncpg pool belongs to, from any anyio loop.

    Called on that loop, the function is simply awaited. Called from elsewhere (trio, or asyncio
    in another thread) it hops: the function becomes a task on the pool's loop via
    ``call_soon_threadsafe``, and the caller sleeps on an ``anyio.Event`` that the task's done
    callback sets through ``call_soon_in_loop``. Neither thread ever blocks on the other. The
    price is two cross-thread wake-ups per call (see the numbers in the issue note), small next
    to a PostgreSQL round trip.

    Why not trio-asyncio: it runs asyncio inside trio's own thread, but only inside a loop that
    the *application* opens (``trio_asyncio.open_loop()``) -- a library cannot impose that on its
    users -- and it is one more dependency that tracks private internals of both event loops.

    A bridge made by :meth:`start` owns its loop and thread; :meth:`aclose` stops them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.owns_thread = False
        self._thread: threading.Thread | None = None
        self._on_exit: Callable[[], None] | None = None

    @classmethod
    def start(cls) -> _AsyncioBridge:
        # The loop is made here (that does not block) so calls can be queued on it at once;
        # run_forever() picks them up as soon as the thread runs.
        bridge = cls(asyncio.new_event_loop())
        bridge.owns_thread = True
        bridge._thread = threading.Thread(
            target=bridge._main, name="jeevesagent-asyncpg", daemon=True
        )
        bridge._thread.start()
        return bridge

    def _main(self) -> None:
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(_reap_loop())
        finally:
            self.loop.close()
            if self._on_exit is not None:
                self._on_exit()

    async def run(self, fn: AsyncFn[T], *, shield: bool = False) -> T:
        """Await ``fn()`` on the bridge's loop.

        ``shield=True`` makes the call immune to the caller's cancellation (use it for writes).
        Otherwise a cancelled caller cancels the task and waits until it has ended, so nothing
        keeps running unobserved, then the cancellation propagates.
        """
        # The token, not asyncio.get_running_loop(): trio in guest mode runs on an asyncio loop
        # that its tasks must still not await asyncio futures on.
        token = anyio.lowlevel.current_token()
        if token.native_token is self.loop:
            if not shield:
                return await fn()
            with anyio.CancelScope(shield=True):
                return await fn()
        return await self._hop(fn, shield, token)

    async def _hop(self, fn: AsyncFn[T], shield: bool, token: EventLoopToken) -> T:
        # fn() is called on the bridge loop, so a task cancelled before it starts leaves no
        # never-awaited coroutine behind.
        done = anyio.Event()
        task: asyncio.Task[T] | None = None

        def spawn() -> None:  # on the bridge loop
            nonlocal task
            task = self.loop.create_task(fn())
            task.add_done_callback(lambda _: call_soon_in_loop(token, done.set))

        def cancel() -> None:  # on the bridge loop, always after spawn() (FIFO)
            if task is not None:
                task.cancel()

        # A pool handed to us belongs to a loop we do not run; it has to be running.
        if not (self.owns_thread or self.loop.is_running()):
            raise StoreError(
                "the asyncio event loop of the asyncpg pool is not running; pass a pool whose "
                "loop keeps running, or use PostgresJournalStore.connect()."
            )
        try:
            self.loop.call_soon_threadsafe(spawn)
        except RuntimeError as exc:  # the loop is closed
            raise StoreClosedError("the PostgreSQL store's event loop is closed.") from exc
        try:
            with anyio.CancelScope(shield=shield):
                await done.wait()
        except BaseException:
            self.loop.call_soon_threadsafe(cancel)
            with anyio.CancelScope(shield=True):
                await done.wait()
            assert task is not None
            if not task.cancelled():
                task.exception()  # mark it retrieved: the cancellation wins
            raise
        assert task is not None
        if task.cancelled():  # only when the loop was stopped under the call
            raise StoreClosedError("the PostgreSQL store was closed during the call.")
        return task.result()

    async def aclose(self) -> None:
        """Stop the owned loop and wait for its thread to end; otherwise do nothing."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        token = anyio.lowlevel.current_token()
        exited = anyio.Event()
        self._on_exit = lambda: call_soon_in_loop(token, exited.set)
        self.loop.call_soon_threadsafe(self.loop.stop)
        with anyio.CancelScope(shield=True):
            await exited.wait()
        # The thread has nothing left but to return, so join() does not stall the event loop.
        # (anyio.to_thread.run_sync(thread.join) would leave a pooled worker thread behind.)
        thread.join()


async def _reap_loop() -> None:
    """Last act of an owned loop: end what asyncpg may have left and the resolver threads."""
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()


class PostgresJournalStore(NativeStore):
    """A journal in PostgreSQL, shared by many workers on many hosts.

    Make one with ``await PostgresJournalStore.connect(dsn)``, or pass an asyncpg pool you
    manage. Call :meth:`init_schema` once per database (it is idempotent), or apply
    :meth:`schema_sql` with your migration tool. Table names are unqualified, so the connection's
    ``search_path`` chooses the schema (``dsn + "?search_path=myschema"`` with asyncpg).

    Works under asyncio and trio alike; under trio, asyncpg runs on an asyncio loop in a thread
    of the store's own, stopped by :meth:`aclose`.

    ``aclose()`` closes the pool only when the store created it (``connect``); a pool you pass
    in stays yours to close, since other code may share it.
    """

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self._pool = pool
        # An asyncpg pool is bound to the asyncio loop it was created on (it keeps it as _loop).
        self._bridge = _AsyncioBridge(pool._loop)
        self._owns_pool = False
        # Group commit makes exactly one write at a time, so writes keep one connection of the
        # pool for themselves instead of acquiring one per commit (which costs about as much as
        # the insert on a small machine). Not with a pool of one: reads would starve.
        self._writer: Any = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        pool = "owned" if self._owns_pool else "borrowed"
        via = " via=asyncio-thread" if self._bridge.owns_thread else ""
        return f"<PostgresJournalStore {state} pool={pool}{via}>"

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10
    ) -> PostgresJournalStore:
        """Open a connection pool to ``dsn``; the store owns it and closes it in ``aclose()``."""
        loop = anyio.lowlevel.current_token().native_token
        if isinstance(loop, asyncio.AbstractEventLoop):
            bridge = _AsyncioBridge(loop)
        else:  # trio: asyncpg gets an asyncio loop in a thread of the store's own
            bridge = _AsyncioBridge.start()
        try:
            pool = await _call(
                bridge,
                None,
                lambda: _create_pool(dsn, min_size, max_size),
                "connecting to PostgreSQL",
            )
        except BaseException:
            await bridge.aclose()
            raise
        store = cls(pool)
        store._bridge = bridge
        store._owns_pool = True
        return store

    @staticmethod
    def schema_sql() -> list[str]:
        """The DDL of the journal, as idempotent statements to run in order."""
        return [
            "CREATE TABLE IF NOT EXISTS jrt_schema_version (version integer NOT NULL)",
            "CREATE TABLE IF NOT EXISTS jrt_journal (session_id text NOT NULL,"
            " kind smallint NOT NULL, key text NOT NULL, value bytea NOT NULL,"
            " created_at double precision NOT NULL, PRIMARY KEY (session_id, kind, key))",
            f"INSERT INTO jrt_schema_version (version) SELECT {SCHEMA_VERSION}"
            " WHERE NOT EXISTS (SELECT 1 FROM jrt_schema_version)",
        ]

    async def init_schema(self) -> None:
        """Create the tables if they are missing. Safe when several processes do it at once."""
        self.check_open()
        # Not shielded: cancelling rolls the DDL transaction back, and running it again is safe.
        await self._run(lambda: _apply_schema(self._pool, self.schema_sql()), "creating the schema")

    async def _run(
        self,
        fn: AsyncFn[T],
        action: str,
        session_id: str | None = None,
        step: str | None = None,
        *,
        shield: bool = False,
    ) -> T:
        return await _call(self._bridge, self._pool, fn, action, session_id, step, shield=shield)

    # -- primitives -------------------------------------------------------------------------------
    async def _load(self, session_id: str) -> SessionJournal:
        return await self._run(lambda: _load_rows(self._pool, session_id), "loading", session_id)

    async def _get(self, session_id: str, kind: int, key: str) -> Row | None:
        return await self._run(
            lambda: _get_row(self._pool, session_id, kind, key), "reading", session_id, key
        )

    async def _insert(self, records: Sequence[Record]) -> dict[Key, Row]:
        if not records:
            return {}
        # A batch may span sessions (group commit): name the session and step only if unique.
        sessions = {r.session_id for r in records}
        session_id = records[0].session_id if len(sessions) == 1 else None
        step = records[0].key if len(records) == 1 else None
        # Shielded: a caller must never walk away not knowing whether its commit happened.
        return await self._run(
            lambda: self._write_rows(records), "recording", session_id, step, shield=True
        )

    async def _write_rows(self, records: Sequence[Record]) -> dict[Key, Row]:
        """On the pool's loop: insert through the held writer connection."""
        if self._pool.get_max_size() < 2:
            return await _insert_rows(self._pool, records)
        if self._writer is None or self._writer.is_closed():
            self._writer = await self._pool.acquire()
        try:
            return await _insert_rows(self._writer, records)
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

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                if self._writer is not None:
                    await self._run(self._release_writer, "releasing the writer connection")
                if self._owns_pool:
                    await self._run(lambda: _close_pool(self._pool), "closing the pool")
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


async def _apply_schema(pool: Any, statements: list[str]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Two concurrent CREATE TABLE IF NOT EXISTS can both pass the check, and then one fails
        # on a catalog unique index; the transaction-scoped lock makes the second one wait.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
        for statement in statements:
            await conn.execute(statement)


async def _load_rows(pool: Any, session_id: str) -> SessionJournal:
    journal = SessionJournal({}, {})
    for kind, key, value, created_at in await pool.fetch(_LOAD, session_id):
        (journal.steps if kind == STEP else journal.streams)[key] = Row(value, created_at)
    return journal


async def _get_row(pool: Any, session_id: str, kind: int, key: str) -> Row | None:
    found = await pool.fetchrow(_GET, session_id, kind, key)
    return None if found is None else Row(found[0], found[1])


async def _insert_rows(pool: Any, records: Sequence[Record]) -> dict[Key, Row]:
    # `pool` is a pool or a connection: both have fetch() and execute().
    if len(records) == 1:
        # The common case of a sequential session: a plain one-row insert (no array encoding;
        # asyncpg does not have to introspect array types on a new connection).
        status = await pool.execute(_INSERT_ONE, *records[0])
        if status.endswith(" 1"):
            return {}
        r = records[0]
        found = await pool.fetchrow(_GET, r.session_id, r.kind, r.key)
        return {} if found is None else {(r.session_id, r.kind, r.key): Row(found[0], found[1])}
    # One statement: one round trip, and an autocommitted transaction for the whole batch.
    inserted = await pool.fetch(
        _INSERT,
        [r.session_id for r in records],
        [r.kind for r in records],
        [r.key for r in records],
        [r.data for r in records],
        [r.created_at for r in records],
    )
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
    rows = await pool.fetch(_SELECT_KEYS, *(list(col) for col in zip(*wanted, strict=True)))
    return {(r[0], r[1], r[2]): Row(r[3], r[4]) for r in rows}


# -- errors ---------------------------------------------------------------------------------------
@functools.cache
def _driver_errors() -> tuple[type[Exception], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


@functools.cache
def _connection_errors() -> tuple[type[Exception], ...]:
    import asyncpg

    return (
        OSError,  # refused, reset, timed out
        asyncpg.ConnectionDoesNotExistError,  # the server went away mid-call
        # ... or just before the call: asyncpg then sometimes reports "cannot switch to state
        # N" (MagicStack/asyncpg#1069); the pool drops that connection all the same.
        asyncpg.InternalClientError,
        asyncpg.PostgresConnectionError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.CannotConnectNowError,
    )


async def _call(
    bridge: _AsyncioBridge,
    pool: Any,
    fn: AsyncFn[T],
    action: str,
    session_id: str | None = None,
    step: str | None = None,
    *,
    shield: bool = False,
) -> T:
    """Run ``fn()`` through ``bridge``, translating driver errors into :class:`StoreError`."""
    try:
        return await bridge.run(lambda: _expiring_on_failure(pool, fn), shield=shield)
    except _driver_errors() as exc:
        raise _store_error(exc, action, session_id, step) from exc


async def _expiring_on_failure(pool: Any, fn: AsyncFn[T]) -> T:
    try:
        return await fn()
    except _connection_errors():
        # One dead connection usually means the server restarted and every idle one is dead
        # too: have the pool replace them all on their next acquire, so only this call fails.
        if pool is not None:
            await pool.expire_connections()
        raise


def _store_error(
    exc: Exception, action: str, session_id: str | None, step: str | None
) -> StoreError:
    import asyncpg

    where = ""
    if session_id is not None:
        where = f" (session {session_id!r}" + (f", step {step!r})" if step is not None else ")")
    if isinstance(exc, _connection_errors()):
        hint = (
            "the database connection failed. Check that the PostgreSQL server is running and "
            "reachable; the pool reconnects on the next call."
        )
    elif isinstance(exc, asyncpg.UndefinedTableError):
        hint = (
            "the journal tables do not exist. Call init_schema() once (or apply "
            "PostgresJournalStore.schema_sql()), and check the search_path."
        )
    elif isinstance(exc, asyncpg.PostgresError):
        hint = "PostgreSQL refused the operation."
    else:
        hint = "the asyncpg driver refused the call."
    message = f"PostgresJournalStore: {action}{where} failed: {hint} ({type(exc).__name__}: {exc})"
    return StoreError(message, session_id=session_id, step=step)

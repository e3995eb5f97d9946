"""The Postgres store's journal writes without a thread hop: one libpq connection (``psycopg.pq``,
psycopg's documented libpq wrapper) driven in the caller's own event loop by anyio's
``wait_readable`` / ``wait_writable``.

Why: asyncpg runs only on asyncio, so under trio every asyncpg call hops to the store's asyncio
thread and back (:class:`.pgbridge._AsyncioBridge`), ~50-170 µs per call on a 2-core machine --
more than DESIGN §5 allows a recorded step over the asyncio floor ("no thread hop per write").
Writes are the one call per step, so they, and only they, go through this connection; session
opens, reads, LISTEN and the mailbox stay on asyncpg. On asyncio too, by default: there a recorded
stream measured 1.43-1.47x its floor over this connection against 1.84-2.36x through asyncpg
(``benchmarks/run.py``, alternating runs), though a step runs ~5% more user-space instructions
(276k vs 263k, ``benchmarks/pg_instructions.py``): the thread's CPU, kernel included, was lower.

Why not psycopg's own ``AsyncConnection``: it waits through asyncio, and making it wait through
anyio means replacing undocumented functions. This module uses only public API: libpq's
asynchronous command functions as ``psycopg.pq`` exposes them (``send_prepare``,
``send_query_prepared``, ``flush``, ``consume_input``, ``is_busy``, ``get_result``) and anyio's
socket waits. It reads readiness before it waits (``is_busy()`` first), so a result that has
already arrived costs no wait.

:class:`NativeWriter` offers the three calls :mod:`.pgwrite` makes on a connection --
``execute`` (the command status), ``fetch`` (rows as tuples) and ``fetchrow`` -- for the
parameter and result types those statements use. Statements are prepared once per connection
(the server infers the parameter types, as asyncpg has it do); parameters travel as text, bytes
as binary, and results come back binary. Connecting, which may resolve a host name, happens in a
worker thread once; after a failure the connection is dropped and the next write reconnects.
"""

from __future__ import annotations

import select
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import anyio

__all__ = [
    "NativeConnectionError",
    "NativeServerError",
    "NativeWriter",
    "libpq_available",
    "libpq_conninfo",
]


class NativeConnectionError(OSError):
    """The libpq connection failed (refused, lost, reset): the Postgres store reports it as a
    connection error, like asyncpg's."""


class NativeServerError(Exception):
    """The server refused a statement; ``sqlstate`` is its error code."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def libpq_available() -> bool:
    """Whether ``psycopg.pq`` imports (psycopg 3 with a libpq it can load)."""
    try:
        from psycopg import pq  # noqa: F401
    except ImportError:
        return False
    return True


# Query parameters of a connection URI that asyncpg reads itself (the rest it sends to the server
# as settings); libpq knows them by the same names, and "database" as "dbname".
_ASYNCPG_URI_PARAMS = frozenset(
    {
        "host", "port", "dbname", "database", "user", "password", "passfile", "sslmode",
        "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
    }
)  # fmt: skip


def libpq_conninfo(dsn: str) -> str:
    """The libpq URI that connects like asyncpg does to ``dsn``: asyncpg sends query parameters
    it does not know (``search_path=...``, ``application_name=...``) as server settings, which
    libpq refuses in a URI, so those move into ``options`` as ``-c name=value``."""
    base, sep, query = dsn.partition("?")
    if not sep:
        return dsn
    kept: list[tuple[str, str]] = []
    settings: list[str] = []
    options = ""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "options":
            options = value
        elif name in _ASYNCPG_URI_PARAMS:
            kept.append(("dbname" if name == "database" else name, value))
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            settings.append(f"-c {name}={escaped}")
    if settings or options:
        kept.append(("options", " ".join([*([options] if options else []), *settings])))
    return f"{base}?{urlencode(kept, quote_via=quote)}" if kept else base


def _param(value: Any) -> tuple[bytes | None, int]:
    """A parameter as (bytes, format): text for everything but ``bytes``, which go binary."""
    if value is None:
        return None, 0
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), 1
    if isinstance(value, str):
        return value.encode(), 0
    if isinstance(value, bool):
        return (b"t" if value else b"f"), 0
    if isinstance(value, int):
        return str(value).encode(), 0
    if isinstance(value, float):
        return repr(value).encode(), 0  # repr reads back exactly
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value)
        return ("{" + ",".join(quoted) + "}").encode(), 0
    raise TypeError(f"the libpq writer cannot send a {type(value).__name__} parameter")


_INT2, _INT4, _INT8 = struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_FLOAT8 = struct.Struct(">d")
_TEXT_OIDS = frozenset({19, 25, 1043})  # name, text, varchar


def _column(oid: int, value: bytes | None) -> Any:
    """A binary result value of type ``oid`` as Python."""
    if value is None or oid == 2278:  # NULL, void (pg_notify)
        return None
    if oid in _TEXT_OIDS:
        return bytes(value).decode()
    if oid == 17:  # bytea
        return bytes(value)
    if oid == 16:  # bool
        return value == b"\x01"
    if oid == 21:
        return _INT2.unpack(value)[0]
    if oid == 23:
        return _INT4.unpack(value)[0]
    if oid == 20:
        return _INT8.unpack(value)[0]
    if oid == 701:
        return _FLOAT8.unpack(value)[0]
    raise TypeError(f"the libpq writer cannot read a result column of type oid {oid}")


class _Libpq:
    """What this module uses of psycopg, imported once, when the first writer connects."""

    def __init__(self) -> None:
        from psycopg import OperationalError, pq

        self.connect = pq.PGconn.connect
        self.operational_error = OperationalError
        self.ok = pq.ConnStatus.OK
        self.results_ok = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
        self.sqlstate = pq.DiagnosticField.SQLSTATE


_libpq: _Libpq | None = None


def _poller(fd: int) -> Any:
    """Something whose ``poll(0)`` says, without waiting, whether ``fd`` has input (the
    connection's own, registered once)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return poller

    class _Select:  # pragma: no cover - Windows has no poll()
        @staticmethod
        def poll(timeout: int) -> list[int]:
            return [fd] if select.select([fd], [], [], timeout)[0] else []

    return _Select()


class NativeWriter:
    """One libpq connection for the store's journal writes, in the caller's event loop.

    One call at a time (the group committer makes one write at a time; a second concurrent call
    is a bug and raises). Any failure but a server's refusal of a statement drops the connection
    (its protocol state is unknown); the next call connects again.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._pg: Any = None  # psycopg.pq.PGconn
        self._fd = -1
        self._poll: Any = None
        self._prepared: dict[str, bytes] = {}
        self._busy = False

    def __repr__(self) -> str:
        return f"<NativeWriter {'connected' if self._pg is not None else 'idle'}>"

    @property
    def connected(self) -> bool:
        return self._pg is not None

    async def connect(self) -> None:
        """Open the connection now (it is otherwise opened by the first call)."""
        await self._connection()

    async def _connection(self) -> Any:
        global _libpq
        lib = _libpq
        pg = self._pg
        if pg is not None:
            # Idle, it has nothing to read unless the server ended it (a restart, an idle
            # timeout, pg_terminate_backend: an error message, then the end of the stream). Read
            # that now, without waiting, so that a connection which died while idle is replaced
            # before anything is sent on it (asyncpg's pool does the same), and only a failure
            # during a call fails the call.
            assert lib is not None
            try:
                while pg.status == lib.ok and self._poll.poll(0):
                    pg.consume_input()  # raises at the end of the stream
            except lib.operational_error:  # the server closed it
                pass
            if pg.status == lib.ok:
                return pg
            self.close()
        if lib is None:
            lib = _libpq = _Libpq()
        conninfo = self._conninfo.encode()

        def connect() -> Any:  # blocking (it may resolve a host name): in a worker thread
            pg = lib.connect(conninfo)
            if pg.status != lib.ok:
                message = pg.error_message.decode(errors="replace").strip()
                pg.finish()
                raise NativeConnectionError(message)
            pg.nonblocking = 1
            return pg

        pg = await anyio.to_thread.run_sync(connect)
        self._pg, self._fd, self._poll, self._prepared = pg, pg.socket, _poller(pg.socket), {}
        return pg

    def close(self) -> None:
        """Close the connection (idempotent; a later call would open a new one)."""
        pg, self._pg, self._poll = self._pg, None, None
        if pg is not None:
            pg.finish()

    async def execute(self, sql: str, *args: Any) -> str:
        """Run ``sql``; return its command status (``"INSERT 0 1"``), as asyncpg does."""
        result = await self._run(sql, args)
        return str(result.command_status.decode())

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql``; return its rows."""
        result = await self._run(sql, args)
        oids = [result.ftype(i) for i in range(result.nfields)]
        return [
            tuple(_column(oid, result.get_value(row, col)) for col, oid in enumerate(oids))
            for row in range(result.ntuples)
        ]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def _run(self, sql: str, args: Sequence[Any]) -> Any:
        # Encoded before anything is sent: a parameter it cannot send leaves the connection as is.
        values: list[bytes | None] = []
        formats: list[int] = []
        for arg in args:
            value, fmt = _param(arg)
            values.append(value)
            formats.append(fmt)
        if self._busy:
            raise RuntimeError("NativeWriter: a call is already in progress (one at a time)")
        self._busy = True
        try:
            pg = await self._connection()
            try:
                name = self._prepared.get(sql)
                if name is None:
                    name = f"jrt_{len(self._prepared)}".encode()
                    pg.send_prepare(name, sql.encode())
                    await self._result(pg)
                    self._prepared[sql] = name
                pg.send_query_prepared(name, values, formats, result_format=1)
                return await self._result(pg)
            except NativeServerError:
                raise  # the connection is fine: the server refused this statement
            except BaseException as exc:
                self.close()  # unknown protocol state: never reuse it
                assert _libpq is not None
                if isinstance(exc, _libpq.operational_error):  # sending or reading failed
                    raise NativeConnectionError(str(exc)) from exc
                raise
        finally:
            self._busy = False

    async def _result(self, pg: Any) -> Any:
        """Send what is queued, then read the command's results; return its last one."""
        fd = self._fd
        while pg.flush():
            await anyio.wait_writable(fd)
        last = None
        while True:
            while pg.is_busy():
                await anyio.wait_readable(fd)
                pg.consume_input()
            result = pg.get_result()
            if result is None:
                break
            last = result
        if last is None:
            raise NativeConnectionError("the server sent no result")
        assert _libpq is not None
        if last.status not in _libpq.results_ok:
            message = last.error_message.decode(errors="replace").strip()
            sqlstate = last.error_field(_libpq.sqlstate)
            raise NativeServerError(message, sqlstate.decode() if sqlstate else None)
        return last

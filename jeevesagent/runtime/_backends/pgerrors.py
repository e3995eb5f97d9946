"""How the Postgres store calls asyncpg: every call goes through the asyncio bridge, and a driver
error (asyncpg's, or the libpq writer's of :mod:`.pgnative`) comes out as a :class:`StoreError`
naming the action, session and step, with what to do.
A lost connection also has the pool replace its idle connections, so only that one call fails.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from .._errors import ErrorMatch, StoreError, driver_error
from .pgbridge import AsyncFn, _AsyncioBridge
from .pgnative import NativeServerError

__all__ = ["call_translated", "connection_errors", "driver_errors", "store_error"]

T = TypeVar("T")


@functools.cache
def driver_errors() -> tuple[type[Exception], ...]:
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,  # with the libpq writer's NativeConnectionError
        NativeServerError,
    )


@functools.cache
def connection_errors() -> tuple[type[Exception], ...]:
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


async def call_translated(
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
        return await bridge.run(lambda: expiring_on_failure(pool, fn), shield=shield)
    except driver_errors() as exc:
        raise store_error(exc, action, session_id, step) from exc


async def expiring_on_failure(pool: Any, fn: AsyncFn[T]) -> T:
    try:
        return await fn()
    except connection_errors():
        # One dead connection usually means the server restarted and every idle one is dead
        # too: have the pool replace them all on their next acquire, so only this call fails.
        if pool is not None:
            await pool.expire_connections()
        raise


@functools.cache
def _hints() -> tuple[tuple[ErrorMatch, str], ...]:
    """The Postgres store's mapping for :func:`driver_error`."""
    import asyncpg

    return (
        (
            connection_errors(),
            "the database connection failed. Check that the PostgreSQL server is running and "
            "reachable; the pool reconnects on the next call.",
        ),
        (
            lambda exc: (
                isinstance(exc, asyncpg.UndefinedTableError)
                or (isinstance(exc, NativeServerError) and exc.sqlstate == "42P01")
            ),
            "the journal tables do not exist. Call init_schema() once (or apply "
            "PostgresJournalStore.schema_sql()), and check the search_path.",
        ),
        ((asyncpg.PostgresError, NativeServerError), "PostgreSQL refused the operation."),
        (BaseException, "the asyncpg driver refused the call."),
    )


def store_error(
    exc: Exception, action: str, session_id: str | None, step: str | None
) -> StoreError:
    where = ""
    if session_id is not None:
        where = f" (session {session_id!r}" + (f", step {step!r})" if step is not None else ")")

    def message(hint: str) -> str:
        return f"PostgresJournalStore: {action}{where} failed: {hint} ({type(exc).__name__}: {exc})"

    return driver_error(exc, _hints(), message, session_id=session_id, step=step)

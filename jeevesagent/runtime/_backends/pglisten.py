"""Signal notices of the Postgres store: the one ``LISTEN jrt_signal`` connection (outside the
pool), the wake callbacks registered on it, and reopening it when the server drops it.

A lost connection (a server restart, ``pg_terminate_backend``, a network failure) is noticed
through asyncpg's termination listener and reopened by a task of the listener's own, with
backoff, until it is back or the store closes; ``aclose()`` ends that task. Notices sent while no
connection listened are gone, so once it is back every session with a signal in its mailbox is
woken once: its waiter looks at the mailbox and finds what was missed. Meanwhile
:attr:`Listener.pushing` is false and waiters poll.

Everything here runs on the pool's asyncio loop, except :meth:`Listener.registered` and
:attr:`Listener.pushing`, plain reads that any thread may make.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from .thread import LoopHandle, call_soon_in_loop

__all__ = ["CHANNEL", "Listener"]

_log = logging.getLogger("jeevesagent.runtime._postgres")
#: The notice channel: signals sent, sessions created, cancelled or released.
CHANNEL = "jrt_signal"
_CLOSE_TIMEOUT = 10.0
# Reopening a lost connection: the first try at once, then waits doubling up to the last.
_FIRST_RETRY = 0.05
_MAX_RETRY = 5.0
# Sessions with a signal waiting: woken once the connection is back (their notices were lost).
_WAITING = "SELECT DISTINCT session_id FROM jrt_mailbox"


class Listener:
    """The LISTEN connection of one store over ``pool``, and who to wake on a notice."""

    def __init__(self, pool: Any, channel: str = CHANNEL) -> None:
        self._pool = pool
        self._channel = channel
        self._conn: Any = None
        self._opening: asyncio.Task[None] | None = None  # the connection being opened
        self._wakes: dict[Callable[[str], None], LoopHandle] = {}
        self._reopen: asyncio.Task[None] | None = None
        self._closed = False

    def registered(self, wake: Callable[[str], None]) -> bool:
        return wake in self._wakes

    @property
    def pushing(self) -> bool:
        """Whether notices arrive now (false while a lost connection is being reopened)."""
        return self._conn is not None

    @property
    def reopening(self) -> bool:
        """Whether a task of the listener's own is bringing a lost connection back."""
        return self._reopen is not None

    @property
    def active(self) -> bool:
        """Whether there is anything for :meth:`aclose` to end."""
        return (
            self._conn is not None
            or self._reopen is not None
            or self._opening is not None
            or bool(self._wakes)
        )

    async def watch(self, wake: Callable[[str], None], token: LoopHandle) -> bool:
        """Register ``wake`` (called in ``token``'s loop) and make sure the connection is up.
        ``False`` while a lost connection is being reopened; a first open that fails raises."""
        new = wake not in self._wakes
        self._wakes.setdefault(wake, token)
        if self._conn is not None and not self._conn.is_closed():
            return True
        if self._reopen is not None:
            return False  # the reopening task brings it back; poll meanwhile
        try:
            await self._open()
        except BaseException:
            if new:
                del self._wakes[wake]  # so the next watch() tries again
            raise
        return True

    async def _open(self) -> None:
        # The connection is opened by a task of the listener's own, which a caller's cancellation
        # does not interrupt: asyncpg before 0.32 leaks the socket of a connect() cancelled part
        # way (seen with a stream reader dropped at once). A caller that is cancelled leaves at
        # once; the connection, when it is up, is the listener's, and aclose() closes it.
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._connect())
            self._opening.add_done_callback(self._opened)
        await asyncio.shield(self._opening)

    def _opened(self, task: asyncio.Task[None]) -> None:
        if self._opening is task:
            self._opening = None
        if not task.cancelled():
            task.exception()  # retrieved here too: a caller that left does not see it

    async def _connect(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        self._conn = None
        pool = self._pool
        conn = await pool._connect(
            *pool._connect_args,
            loop=pool._loop,
            connection_class=pool._connection_class,
            record_class=pool._record_class,
            **pool._connect_kwargs,
        )
        try:
            if self._closed:
                raise _Closed  # aclose() ran while it connected
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close(timeout=_CLOSE_TIMEOUT)
            raise
        conn.add_termination_listener(self._on_lost)
        self._conn = conn

    def _on_notify(self, conn: Any, pid: int, channel: str, session_id: str) -> None:
        self._wake([session_id])

    def _wake(self, session_ids: list[str]) -> None:
        # Every callback runs on the loop it registered from.
        for wake, token in list(self._wakes.items()):
            for session_id in session_ids:
                call_soon_in_loop(token, functools.partial(wake, session_id))

    def _on_lost(self, conn: Any) -> None:
        if conn is not self._conn or self._closed:
            return  # an old connection, or closed by aclose()
        self._conn = None
        _log.warning(
            "PostgresJournalStore: the LISTEN connection for signals was lost; reopening it "
            "(waiters poll the mailbox meanwhile)."
        )
        if self._reopen is None:
            self._reopen = asyncio.get_running_loop().create_task(self._reopen_until_up())
            self._reopen.add_done_callback(_report_failure)

    async def _reopen_until_up(self) -> None:
        delay = _FIRST_RETRY
        try:
            while not self._closed:
                try:
                    await self._open()
                    waiting = [row[0] for row in await self._pool.fetch(_WAITING)]
                except _failures() as exc:
                    _log.debug("PostgresJournalStore: reopening the LISTEN connection: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY)
                    continue
                _log.info("PostgresJournalStore: the LISTEN connection for signals is back.")
                self._wake(waiting)
                return
        finally:
            self._reopen = None

    async def aclose(self) -> None:
        """End the reopening task, close the connection, forget the callbacks."""
        self._closed = True
        task, self._reopen = self._reopen, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # neither raises its outcome nor hides our cancellation
        opening = self._opening
        if opening is not None:
            # Not cancelled (see _open): it closes what it opened once it sees _closed.
            await asyncio.wait([opening])
        conn, self._conn = self._conn, None
        self._wakes.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=_CLOSE_TIMEOUT)


@functools.cache
def _failures() -> tuple[type[Exception], ...]:
    """What a try to reopen may meet: the server still down, refusing, or slow."""
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class _Closed(RuntimeError):
    """The listener was closed while its connection was being opened."""

    def __init__(self) -> None:
        super().__init__(
            "the store was closed while its LISTEN connection was being opened; open a new store"
        )


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error(
            "PostgresJournalStore: reopening the LISTEN connection failed; the next signal "
            "wait opens it again.",
            exc_info=task.exception(),
        )

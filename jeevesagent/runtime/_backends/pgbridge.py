"""Run asyncpg (asyncio-only) from any anyio event loop: the Postgres store's bridge; and the
check that asyncpg is there at all (:func:`require_asyncpg`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

from .._errors import StoreClosedError, StoreError
from .thread import LoopHandle, call_soon_in_loop

__all__ = ["AsyncFn", "_AsyncioBridge", "ki_protected", "require_asyncpg"]

T = TypeVar("T")
AsyncFn = Callable[[], Coroutine[Any, Any, T]]
F = TypeVar("F", bound=Callable[..., Any])


def ki_protected(fn: F) -> F:
    """Under trio, defer a KeyboardInterrupt (Ctrl+C, SIGINT) raised in ``fn`` to its next
    checkpoint. trio otherwise raises it at any bytecode: between handing a call to the pool's
    loop and starting to watch it, it would leave that call running unobserved, and the
    connection it holds busy for the next caller ("another operation is in progress"). At a
    checkpoint it is handled like a cancellation: the call is cancelled and waited for."""
    try:  # trio is optional: without it there is no trio KeyboardInterrupt to defer
        from trio.lowlevel import enable_ki_protection
    except ImportError:  # pragma: no cover - trio is installed with the test extra
        return fn
    return enable_ki_protection(fn)


def require_asyncpg() -> None:
    """Fail before anything starts, saying what to install, when the driver cannot be imported
    (it is optional: the ``postgres`` extra)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"PostgreSQL needs the asyncpg driver, which cannot be imported ({exc}): install it "
            'with `pip install "jeevesagent[postgres]"`',
            name="asyncpg",
        ) from exc


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

    Why not a Postgres driver that runs natively under trio for everything (issue 14 measured
    the candidates): psycopg's ``AsyncConnection`` waits through asyncio, and making it wait
    through anyio means replacing undocumented functions (``AsyncConnection.wait()``,
    ``waiting.wait_conn_async()``); its pool is asyncio-only; pg-purepy needs Python 3.13, breaks
    on a notification that arrives during a query and mangles array text; triopg is unmaintained
    and no faster than this hop. On the 2-core machine of ``benchmarks/RESULTS.md`` a round
    trip between trio's thread and this one costs ~50-170 µs (``benchmarks/bridge.py``), more
    than DESIGN §5 allows a recorded step over the asyncio floor. So the one call per step --
    the journal write -- does not come here under trio: :mod:`.pgnative` sends it over a libpq
    connection (psycopg's documented ``psycopg.pq``) driven by anyio's socket waits in trio's
    own loop (on asyncio too, by default, where it measured cheaper than asyncpg's write).
    Everything else (opens, reads, LISTEN, the mailbox) stays on asyncpg, through this bridge,
    public APIs only.

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
        token = LoopHandle()
        if token.asyncio_loop is self.loop:
            if not shield:
                return await fn()
            with anyio.CancelScope(shield=True):
                return await fn()
        return await self._hop(fn, shield, token)

    @ki_protected
    async def _hop(self, fn: AsyncFn[T], shield: bool, token: LoopHandle) -> T:
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
        token = LoopHandle()
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

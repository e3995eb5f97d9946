"""A worker thread owned by a store, usable from asyncio and trio alike, and the one way the
package wakes an event loop from another thread.

The store's blocking driver (``sqlite3``) lives on one thread for the store's whole life; the event
loop hands it jobs through a queue and is woken when a job is done through :class:`LoopHandle`,
which never blocks the worker on the loop. ``aclose()`` ends the thread.

Waking a loop from a thread without blocking is not in anyio's public API (``from_thread.run_sync``
waits for the loop), so :class:`LoopHandle` uses each loop's own public call for it: trio's
``TrioToken.run_sync_soon`` and asyncio's ``loop.call_soon_threadsafe``. It is the package's only
direct use of the two event loops' APIs, apart from the asyncpg driver's loop (``_pgbridge``).

Waiting for a job is shielded from cancellation: the job runs to completion in the thread either
way, and a caller must not walk away not knowing whether its commit happened. Jobs are short (a
statement or a transaction, bounded by SQLite's busy timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["LoopHandle", "WorkerThread", "call_soon_in_loop"]

T = TypeVar("T")
C = TypeVar("C")


class LoopHandle:
    """The event loop running in the calling thread, to be woken from any other thread.

    Create it in the loop's thread (inside a task); call :meth:`call_soon` from anywhere.
    ``asyncio_loop`` is the asyncio loop when the caller runs on asyncio, else ``None`` (trio,
    trio's guest mode included: its tasks must not await asyncio futures).
    """

    __slots__ = ("_schedule", "asyncio_loop")

    def __init__(self) -> None:
        trio = sys.modules.get("trio")  # trio is running only if it was imported
        if trio is not None:
            try:
                token = trio.lowlevel.current_trio_token()
            except RuntimeError:  # not in a trio run
                pass
            else:
                self.asyncio_loop: asyncio.AbstractEventLoop | None = None
                self._schedule: Callable[[Callable[[], object]], object] = token.run_sync_soon
                return
        loop = asyncio.get_running_loop()  # RuntimeError outside any event loop
        self.asyncio_loop = loop
        self._schedule = loop.call_soon_threadsafe

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` on the loop without waiting. A loop that has already finished is
        ignored: there is nobody left to wake (asyncio raises ``RuntimeError`` for a closed
        loop, trio ``RunFinishedError``, a ``RuntimeError`` too)."""
        with contextlib.suppress(RuntimeError):
            self._schedule(fn)


def call_soon_in_loop(loop: LoopHandle, fn: Callable[[], object]) -> None:
    """Schedule ``fn`` on ``loop`` from any thread, without blocking (see :class:`LoopHandle`)."""
    loop.call_soon(fn)


class _Job:
    __slots__ = ("args", "error", "event", "fn", "result", "token")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], token: LoopHandle) -> None:
        self.fn = fn
        self.args = args
        self.token = token
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class WorkerThread(Generic[C]):
    """One thread holding one resource (a connection) created by ``opener`` in that thread.

    ``await run(fn, *args)`` calls ``fn(resource, *args)`` in the thread and returns its result or
    raises its exception. ``closer(resource)`` runs in the thread when the worker stops.
    """

    def __init__(self, name: str, opener: Callable[[], C], closer: Callable[[C], None]) -> None:
        self._name = name
        self._opener = opener
        self._closer = closer
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._on_exit: Callable[[], None] | None = None  # set by aclose() before the stop job

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                t = threading.Thread(target=self._main, name=self._name, daemon=True)
                t.start()
                self._thread = t

    def _main(self) -> None:
        resource: C | None = None
        open_error: BaseException | None = None
        try:
            resource = self._opener()
        except BaseException as exc:  # reported to every job until closed
            open_error = exc
        while True:
            job = self._queue.get()
            if job is None:
                break
            if open_error is not None:
                job.error = open_error
            else:
                try:
                    job.result = job.fn(resource, *job.args)
                except BaseException as exc:
                    job.error = exc
            job.token.call_soon(job.event.set)
        if resource is not None:
            with contextlib.suppress(Exception):  # closing an already broken connection
                self._closer(resource)
        if self._on_exit is not None:
            self._on_exit()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._stopped:
            raise anyio.ClosedResourceError(f"{self._name}: the worker thread has stopped")
        self._start()
        job = _Job(fn, args, LoopHandle())
        self._queue.put(job)
        with anyio.CancelScope(shield=True):
            await job.event.wait()
        if job.error is not None:
            err = job.error
            job.error = None  # break the frame <-> exception cycle
            raise err
        return job.result  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop the thread after the jobs already queued; wait until it has ended."""
        if self._stopped:
            return
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        exited = anyio.Event()
        self._on_exit = partial(LoopHandle().call_soon, exited.set)
        self._queue.put(None)
        # Wait for the thread's last act (it wakes us), then join a thread that has nothing left
        # to do: join() does not stall the event loop, and no pooled thread is left behind
        # (anyio.to_thread.run_sync(thread.join) would keep one idle until the loop ends).
        with anyio.CancelScope(shield=True):
            await exited.wait()
        thread.join()

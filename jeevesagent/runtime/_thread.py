"""A worker thread owned by a store, usable from asyncio and trio alike.

The store's blocking driver (``sqlite3``) lives on one thread for the store's whole life; the event
loop hands it jobs through a queue and is woken when a job is done through anyio's event-loop token
(``run_sync_soon``), which never blocks the worker on the loop. ``aclose()`` ends the thread.

Waiting for a job is shielded from cancellation: the job runs to completion in the thread either
way, and a caller must not walk away not knowing whether its commit happened. Jobs are short (a
statement or a transaction, bounded by SQLite's busy timeout).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

__all__ = ["WorkerThread", "call_soon_in_loop"]

T = TypeVar("T")
C = TypeVar("C")


def call_soon_in_loop(token: EventLoopToken, fn: Callable[[], object]) -> None:
    """Schedule ``fn`` on the event loop of ``token`` from any thread, without blocking.

    A loop that has already finished is ignored: there is nobody left to wake.
    """
    with contextlib.suppress(Exception):  # RunFinishedError / closed loop: nobody to wake
        token.backend_class.run_sync_soon(fn, (), token.native_token)


class _Job:
    __slots__ = ("args", "error", "event", "fn", "result", "token")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], token: EventLoopToken
    ) -> None:
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
            call_soon_in_loop(job.token, job.event.set)
        if resource is not None:
            with contextlib.suppress(Exception):  # closing an already broken connection
                self._closer(resource)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._stopped:
            raise RuntimeError("worker thread stopped")
        self._start()
        job = _Job(fn, args, anyio.lowlevel.current_token())
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
        self._queue.put(None)
        # join() blocks only while the last queued jobs finish; do it off the event loop.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join)

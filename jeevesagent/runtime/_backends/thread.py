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
statement or a transaction, bounded by SQLite's busy timeout). The wait is the cheapest each loop
offers through its public API: on asyncio a future awaited in a shielded cancel scope, on trio
``trio.lowlevel.wait_task_rescheduled`` refusing to abort (a cancellation is delivered at the
caller's next checkpoint, as after a shielded scope) -- the thread's wake-up reschedules the task.

Batched jobs (``run(..., batched=True)``, given a ``batch`` runner): the thread takes every
batched job already queued behind the first one (in queue order, up to :data:`MAX_JOBS`) and hands
them to the runner together -- the SQLite store runs them in one transaction, one fsync for all --
and wakes their callers once the runner has returned, with one wake-up per event loop. A batched
job may be ``lazy`` (``run(..., batched=True, lazy=True)``): its commit need not be durable, and
the runner may commit a batch made only of lazy jobs without waiting for an fsync.
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

__all__ = ["MAX_JOBS", "BatchJob", "LoopHandle", "WorkerThread", "call_soon_in_loop"]

T = TypeVar("T")
C = TypeVar("C")

#: At most this many batched jobs are handed to the batch runner at once.
MAX_JOBS = 256


class LoopHandle:
    """The event loop running in the calling thread, to be woken from any other thread.

    Create it in the loop's thread (inside a task); call :meth:`call_soon` from anywhere.
    ``asyncio_loop`` is the asyncio loop when the caller runs on asyncio, else ``None`` (trio,
    trio's guest mode included: its tasks must not await asyncio futures).
    """

    __slots__ = ("_schedule", "asyncio_loop")

    def __init__(self) -> None:
        trio = sys.modules.get("trio")  # trio is running only if it was imported
        if trio is not None and trio.lowlevel.in_trio_run():
            self.asyncio_loop: asyncio.AbstractEventLoop | None = None
            token = trio.lowlevel.current_trio_token()
            self._schedule: Callable[[Callable[[], object]], object] = token.run_sync_soon
            return
        loop = asyncio.get_running_loop()  # RuntimeError outside any event loop
        self.asyncio_loop = loop
        self._schedule = loop.call_soon_threadsafe

    @property
    def key(self) -> object:
        """Equal for handles of the same loop (to wake it once for several jobs)."""
        return self._schedule

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` on the loop without waiting. A loop that has already finished is
        ignored: there is nobody left to wake (asyncio raises ``RuntimeError`` for a closed
        loop, trio ``RunFinishedError``, a ``RuntimeError`` too)."""
        with contextlib.suppress(RuntimeError):
            self._schedule(fn)


def call_soon_in_loop(loop: LoopHandle, fn: Callable[[], object]) -> None:
    """Schedule ``fn`` on ``loop`` from any thread, without blocking (see :class:`LoopHandle`)."""
    loop.call_soon(fn)


class BatchJob:
    """One job of a batch, as the batch runner sees it: :meth:`call` runs it, :meth:`fail`
    replaces its outcome by an error (its work was rolled back with the batch). ``lazy``: its
    commit need not be durable (the runner decides how a batch of such jobs commits)."""

    __slots__ = ("args", "batched", "error", "fn", "lazy", "result", "token", "wake")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        token: LoopHandle,
        batched: bool,
        lazy: bool = False,
    ) -> None:
        self.fn = fn
        self.args = args
        self.token = token
        self.batched = batched
        self.lazy = lazy
        self.wake: Callable[[], object] = _nothing  # in the loop, once the job is done
        self.result: Any = None
        self.error: BaseException | None = None

    def call(self, resource: Any) -> bool:
        """Run the job; ``True`` if it returned (its result is kept), ``False`` if it raised."""
        try:
            self.result = self.fn(resource, *self.args)
        except BaseException as exc:  # handed to the caller, in its own thread
            self.error = exc
            return False
        return True

    def fail(self, error: BaseException) -> None:
        self.result = None
        self.error = error


def _nothing() -> None:
    pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # else cancelled by a caller that was not shielded from asyncio itself
        future.set_result(None)


def _refuse_abort(raise_cancel: object) -> object:
    return sys.modules["trio"].lowlevel.Abort.FAILED


_NOTHING: Any = object()  # no job held back


def _wake(jobs: list[BatchJob]) -> None:
    """Wake the callers of ``jobs``: one call into each event loop for all its jobs."""
    if len(jobs) == 1:
        jobs[0].token.call_soon(jobs[0].wake)
        return
    by_loop: dict[object, list[BatchJob]] = {}
    for job in jobs:
        by_loop.setdefault(job.token.key, []).append(job)
    for same in by_loop.values():
        wakes = [job.wake for job in same]

        def wake_all(wakes: list[Callable[[], object]] = wakes) -> None:
            for wake in wakes:
                wake()

        same[0].token.call_soon(wake_all)


class WorkerThread(Generic[C]):
    """One thread holding one resource (a connection) created by ``opener`` in that thread.

    ``await run(fn, *args)`` calls ``fn(resource, *args)`` in the thread and returns its result or
    raises its exception. ``closer(resource)`` runs in the thread when the worker stops.
    ``batch(resource, jobs)``, if given, runs the batched jobs queued together (it calls each
    job's :meth:`BatchJob.call`, in order, and may :meth:`BatchJob.fail` the ones it undoes).
    """

    def __init__(
        self,
        name: str,
        opener: Callable[[], C],
        closer: Callable[[C], None],
        batch: Callable[[C, list[BatchJob]], None] | None = None,
    ) -> None:
        self._name = name
        self._opener = opener
        self._closer = closer
        self._batch = batch
        self._queue: queue.SimpleQueue[BatchJob | None] = queue.SimpleQueue()
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
        held: Any = _NOTHING
        while True:
            job = self._queue.get() if held is _NOTHING else held
            held = _NOTHING
            if job is None:
                break
            if open_error is not None:
                job.error = open_error
            elif job.batched and self._batch is not None:
                jobs = [job]
                while len(jobs) < MAX_JOBS and not self._queue.empty():  # the only reader
                    more = self._queue.get_nowait()
                    if more is None or not more.batched:
                        held = more  # next, after this batch
                        break
                    jobs.append(more)
                try:
                    self._batch(resource, jobs)  # type: ignore[arg-type]
                except BaseException as exc:  # a broken runner: no job may pass as done
                    for j in jobs:
                        j.fail(exc if j is job else RuntimeError(f"batch failed: {exc!r}"))
                _wake(jobs)
                continue
            else:
                job.call(resource)
            job.token.call_soon(job.wake)
        if resource is not None:
            with contextlib.suppress(Exception):  # closing an already broken connection
                self._closer(resource)
        if self._on_exit is not None:
            self._on_exit()

    async def run(
        self, fn: Callable[..., T], *args: Any, batched: bool = False, lazy: bool = False
    ) -> T:
        """``batched``: the job may run in one batch with the other batched jobs queued with it
        (see the ``batch`` runner); it returns once the whole batch is done. ``lazy`` (with
        ``batched``): the job's commit need not be durable (see :class:`BatchJob`)."""
        if self._stopped:
            raise anyio.ClosedResourceError(f"{self._name}: the worker thread has stopped")
        if self._thread is None:
            self._start()
        loop = LoopHandle()
        job = BatchJob(fn, args, loop, batched, lazy)
        if loop.asyncio_loop is None:  # trio: a sleep that no cancellation ends (see above)
            trio = sys.modules["trio"].lowlevel
            job.wake = partial(trio.reschedule, trio.current_task())
            self._queue.put(job)
            await trio.wait_task_rescheduled(_refuse_abort)
        else:
            future: asyncio.Future[None] = loop.asyncio_loop.create_future()
            job.wake = partial(_resolve, future)
            self._queue.put(job)
            with anyio.CancelScope(shield=True):
                await future
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

"""The DBOS side of DBOSRuntime: the one generic DBOS workflow every session runs as, and the
hand-off between that workflow's task and the code of the session (the body of
``async with rt.session(sid)``).

DBOS calls (steps, ``recv``, ``send``, ``sleep``) only work inside the workflow's own task, where
DBOS keeps its workflow context; the session's body runs in the caller's task. So the workflow
task serves requests (``Op``) that the body submits through a :class:`Channel`: each runs in a
child task of the workflow, which sees DBOS's context. A new session's workflow runs on the
caller's event loop; one that DBOS resumes (after a crash, or after a body that raised) runs on
DBOS's own background loop, in another thread. Everything that crosses between the two is
therefore thread-safe: ``concurrent.futures.Future`` (awaited with ``asyncio.wrap_future``) and
``loop.call_soon_threadsafe`` -- never an ``asyncio.Event``, which belongs to one loop.

This module imports ``dbos``; it is imported only when a DBOSRuntime is made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dbos import DBOS

__all__ = [
    "WORKFLOW_NAME",
    "Channel",
    "Request",
    "SessionLeft",
    "Unrecorded",
    "arrival",
    "forget",
    "session_workflow",
    "settle",
]

#: The DBOS workflow name of every session (``dbos workflow list`` shows it).
WORKFLOW_NAME = "jeevesagent.session"

Op = Callable[[], Awaitable[Any]]


class Unrecorded(BaseException):
    """Carries a step's exception (or cancellation) out of a DBOS step so that DBOS records
    nothing: DBOS records only an ``Exception`` as a step's outcome."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class SessionLeft(BaseException):
    """Ends the generic workflow without an outcome, so DBOS keeps it PENDING (resumable): the
    session's body raised, or was cancelled, or the runtime closed while it was open."""


def settle(fut: concurrent.futures.Future[Any], value: Any = None, error: Any = None) -> None:
    """Set a thread-safe future once; a future already set or cancelled is left as it is."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


class Request:
    """One ``Op`` submitted to a workflow task; its outcome arrives in ``future``."""

    def __init__(self, op: Op) -> None:
        self.op = op
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False


class Channel:
    """Requests from a session's body to its workflow task (on the workflow's event loop)."""

    def __init__(self, session_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.session_id = session_id
        self.loop = loop
        self._queue: asyncio.Queue[Request | bool] = asyncio.Queue()
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()

    def submit(self, op: Op) -> Request:
        request = Request(op)
        self.loop.call_soon_threadsafe(self._queue.put_nowait, request)
        return request

    def cancel(self, request: Request) -> None:
        """Cancel a request from any thread (its op records nothing, as DBOS records no step
        that was cancelled)."""

        def on_loop() -> None:
            request.cancelled = True
            if request.task is not None:
                request.task.cancel()

        self.loop.call_soon_threadsafe(on_loop)

    def close(self, completed: bool) -> None:
        """End the workflow once the requests in flight are done: it completes (``True``) or is
        left PENDING for a later run (``False``)."""
        self.loop.call_soon_threadsafe(self._queue.put_nowait, completed)

    async def serve(self) -> bool:
        """Run requests until :meth:`close`; return what ``close`` said."""
        async with asyncio.TaskGroup() as tg:
            while True:
                item = await self._queue.get()
                if isinstance(item, bool):
                    break
                item.task = tg.create_task(self._run(item))
        return item

    async def _run(self, request: Request) -> None:
        if request.cancelled:
            settle(request.future, error=Unrecorded(asyncio.CancelledError()))
            return
        try:
            value = await request.op()
        except asyncio.CancelledError as exc:
            # Cancelled on the caller's behalf (Channel.cancel): end this child task quietly, so
            # the workflow goes on serving the session's other requests.
            settle(request.future, error=Unrecorded(exc))
        except BaseException as exc:  # handed to the caller, who raises it
            settle(request.future, error=exc)
        else:
            settle(request.future, value)


# -- the rendezvous of a session's body and its workflow -----------------------------------------

_lock = threading.Lock()
_arrivals: dict[str, concurrent.futures.Future[Channel]] = {}


def arrival(session_id: str) -> concurrent.futures.Future[Channel]:
    """The future the workflow of ``session_id`` sets with its channel when it starts serving
    (in this process); made by whichever side comes first."""
    with _lock:
        fut = _arrivals.get(session_id)
        if fut is None:
            fut = _arrivals[session_id] = concurrent.futures.Future()
        return fut


def forget(session_id: str, fut: concurrent.futures.Future[Channel]) -> None:
    with _lock:
        if _arrivals.get(session_id) is fut:
            del _arrivals[session_id]


@DBOS.workflow(name=WORKFLOW_NAME)
async def session_workflow(session_id: str) -> None:
    """Every session, as one DBOS workflow (its id is the session id). It serves the body's
    requests; DBOS records each step, message and sleep as a step of this workflow."""
    channel = Channel(session_id, asyncio.get_running_loop())
    fut = arrival(session_id)
    if fut.done():  # a channel of an earlier run of this workflow in this process
        forget(session_id, fut)
        fut = arrival(session_id)
    task = asyncio.current_task()
    assert task is not None
    # DBOS records the workflow's outcome in this same task, after this function returns: the
    # session's close waits for the task, so a reopen sees the recorded status.
    task.add_done_callback(lambda _: settle(channel.ended))
    settle(fut, channel)
    try:
        completed = await channel.serve()
    finally:
        forget(session_id, fut)
    if not completed:
        raise SessionLeft(session_id)

"""What every runtime shares: sessions as task groups, the current-session context variable, the
in-process signal mailbox, and closing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import RuntimeJournalError, StoreClosedError
from .names import check_session_id, check_signal_target
from .observe import SessionScope
from .registry import running_session

__all__ = [
    "BaseRuntime",
    "BaseSession",
    "Mailbox",
    "SessionState",
]

S = TypeVar("S", bound="SessionState")


class Mailbox:
    """Per-(session, signal name) FIFO queues over anyio memory object streams.

    A signal sent before anyone waits stays queued; each signal is received by exactly one waiter.
    The queues are unbounded (a signal must never be dropped or block its sender); a queue with
    nothing buffered and nobody waiting is dropped, so idle names cost nothing.
    """

    def __init__(self) -> None:
        self._queues: dict[
            tuple[str, str], tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]
        ] = {}
        self._waiting: dict[tuple[str, str], int] = {}  # callers inside get(), per queue

    def _queue(
        self, key: tuple[str, str]
    ) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = anyio.create_memory_object_stream[Any](math.inf)
        return q

    def _drop_if_idle(self, key: tuple[str, str]) -> None:
        q = self._queues.get(key)
        idle = q is not None and q[1].statistics().current_buffer_used == 0
        if q is not None and idle and not self._waiting.get(key):
            del self._queues[key]
            q[0].close()
            q[1].close()

    def put(self, session_id: str, name: str, item: Any) -> None:
        self._queue((session_id, name))[0].send_nowait(item)

    async def get(self, session_id: str, name: str, timeout: float | None) -> Any:
        key = (session_id, name)
        receive = self._queue(key)[1]
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            with anyio.fail_after(timeout):
                return await receive.receive()
        except (anyio.ClosedResourceError, anyio.EndOfStream):
            raise StoreClosedError(
                f"the runtime was closed while session {session_id!r} waited for signal "
                f"{name!r}; the wait did not consume anything.",
                session_id=session_id,
                step=name,
            ) from None
        finally:
            n = self._waiting.pop(key) - 1
            if n:
                self._waiting[key] = n
            self._drop_if_idle(key)

    def get_nowait(self, session_id: str, name: str) -> tuple[bool, Any]:
        key = (session_id, name)
        q = self._queues.get(key)
        if q is None:
            return False, None
        try:
            return True, q[1].receive_nowait()
        except anyio.WouldBlock:
            return False, None
        finally:
            self._drop_if_idle(key)

    def pending(self, session_id: str) -> int:
        return sum(
            q[1].statistics().current_buffer_used
            for (sid, _), q in self._queues.items()
            if sid == session_id
        )

    def close(self) -> None:
        for send, receive in self._queues.values():
            send.close()
            receive.close()
        self._queues.clear()


class SessionState:
    """State shared by every open ``session(sid)`` context of one id in one runtime."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.refs = 0
        self.ready = anyio.Event()
        self.error: BaseException | None = None
        self.task_groups: list[TaskGroup] = []  # of the open contexts, oldest first
        # Background services (lease heartbeat, buffered flusher): name -> coroutine function,
        # and the task group of the context each runs in now. See keep_running().
        self._services: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {}
        self._hosts: dict[str, TaskGroup] = {}
        self._leaving: set[TaskGroup] = set()
        # Observability (what .hooks.ObservedSession reads): steps executed and replayed by this
        # process, the tracer when the session's span is recorded (its steps get spans then),
        # the reports of stream steps not ended yet.
        self.executed = 0
        self.replayed = 0
        self.tracer: Any = None
        self.open_streams: set[Any] = set()

    def journal_counts(self) -> tuple[int, int, int] | None:
        """(steps, streams, signal receipts) of the session's journal held in memory, for the
        "opened" report; ``None`` when the runtime loads no journal up front."""
        return None

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run one piece of background work in the task group of an open context."""
        self.task_groups[-1].start_soon(fn)

    def keep_running(self, name: str, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``fn()`` for as long as this state lives (idempotent per ``name``).

        The state is shared by every open context of the session, but a task must live in one
        context's task group. So the service runs in the oldest open context; when that context
        exits while others are still open, the service is started again in one of them. A
        service that returns or raises on its own is not restarted (its exception goes to the
        context it ran in, like any task's).
        """
        if name not in self._services:
            self._services[name] = fn
            if not self._host(name):
                del self._services[name]

    def _host(self, name: str) -> bool:
        """Start service ``name`` in the oldest context that is not ending; ``False`` if none."""
        tg = next((tg for tg in self.task_groups if tg not in self._leaving), None)
        if tg is None:
            return False
        self._hosts[name] = tg
        tg.start_soon(self._serve, name, tg)
        return True

    async def _serve(self, name: str, tg: TaskGroup) -> None:
        with_context = False  # cancelled because its context is ending: it moves on
        try:
            await self._services[name]()
        except anyio.get_cancelled_exc_class():
            with_context = tg in self._leaving
            raise
        finally:
            if not with_context:
                self._services.pop(name, None)
                if self._hosts.get(name) is tg:
                    del self._hosts[name]

    def context_leaving(self, tg: TaskGroup) -> None:
        """A context is about to end its task group (and the services running in it)."""
        self._leaving.add(tg)

    def context_left(self, tg: TaskGroup) -> None:
        """A context's task group has ended: move its services to a context still open."""
        self._leaving.discard(tg)
        moved = [name for name, host in self._hosts.items() if host is tg]
        for name in moved:
            del self._hosts[name]
            if not self._host(name):
                self._services.pop(name, None)


class BaseSession:
    """What ``async with runtime.session(id)`` yields. Sessions are made by their runtime."""

    def __init__(self, session_id: str, runtime: BaseRuntime[Any] | None = None) -> None:
        self.id = session_id
        self._runtime = runtime

    @property
    def runtime(self) -> Any:
        """The runtime that opened this session (``None`` for a session made by hand)."""
        return self._runtime

    async def deliver(self, name: str, payload: Any) -> None:
        """Queue a signal for this session (same as ``runtime.signal(self.id, name, payload)``)."""
        if self._runtime is None:
            raise RuntimeError(
                f"session {self.id!r} is not bound to a runtime; open it with "
                f"`async with runtime.session({self.id!r}) as session:`"
            )
        await self._runtime.signal(self.id, name, payload)

    def __repr__(self) -> str:
        pending = self._runtime._mailbox.pending(self.id) if self._runtime else 0
        return f"<{type(self).__name__} id={self.id!r} pending_signals={pending}>"


class _SessionContext(Generic[S]):
    """``async with runtime.session(sid)``: an anyio task group whose body sees ``sid`` as the
    current session. A body exception comes out unchanged (not in an ExceptionGroup): the task
    group is exited separately from the body's exception, which is then re-raised as it was.
    """

    def __init__(self, runtime: BaseRuntime[S], session_id: str, wait: float | None) -> None:
        self._runtime = runtime
        self._session_id = session_id
        self._wait = wait
        self._state: S | None = None
        self._tg: TaskGroup | None = None
        self._token: Token[S | None] | None = None
        self._session_token: Token[Any] | None = None
        self._scope: SessionScope | None = None

    async def __aenter__(self) -> Any:
        if self._state is not None:
            raise RuntimeError("a session context cannot be entered twice")
        rt = self._runtime
        # The session's span (if traced) is this task's current context until __aexit__.
        scope = self._scope = SessionScope(rt, self._session_id)
        try:
            state = await rt._acquire(self._session_id, self._wait)
            tg = anyio.create_task_group()
            try:
                await tg.__aenter__()
            except BaseException:
                await rt._release(state)
                raise
        except BaseException as exc:
            scope.close(None, exc)
            raise
        first = not state.task_groups  # this context loaded the session
        state.task_groups.append(tg)
        self._state, self._tg = state, tg
        self._token = rt._current.set(state)
        session = rt._session_object(state)
        self._session_token = running_session.set(session)
        scope.opened(state, first)
        rt._context_entered(state, tg)
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        assert self._scope is not None
        try:
            suppressed = await self._exit(exc_type, exc_val, exc_tb)
        except BaseException as exc:
            self._scope.close(self._state, exc)
            raise
        self._scope.close(self._state, None if suppressed else exc_val)
        return suppressed

    async def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        assert self._state is not None
        assert self._tg is not None
        assert self._token is not None
        assert self._session_token is not None
        rt, state, tg = self._runtime, self._state, self._tg
        rt._current.reset(self._token)
        running_session.reset(self._session_token)
        state.context_leaving(tg)
        # Commit what the session still holds before its background work stops. A failure here
        # is raised after the task group has ended (chained to the body's exception, if any).
        exit_error: Exception | None = None
        try:
            with anyio.CancelScope(shield=True):
                await rt._context_exiting(state)
        except Exception as exc:
            exit_error = exc
        outcome = exc_val
        try:
            try:
                if exc_val is not None and isinstance(exc_val, anyio.get_cancelled_exc_class()):
                    # The task group's own scope (or an outer one) decides where it stops.
                    suppressed = await tg.__aexit__(exc_type, exc_val, exc_tb)
                else:
                    # Background work (heartbeat, flusher, inbox) ends with the body.
                    tg.cancel_scope.cancel()
                    await tg.__aexit__(None, None, None)
                    suppressed = None  # the body's exception, if any, propagates unchanged
            except BaseExceptionGroup as group:
                # A background task of the session failed (e.g. the claim was lost) and
                # cancelled the body: raise that error itself, not a group around it.
                _, rest = group.split(anyio.get_cancelled_exc_class())
                if rest is not None and len(rest.exceptions) == 1:
                    outcome = rest.exceptions[0]
                    if isinstance(outcome, RuntimeJournalError):
                        raise outcome from None
                raise
        finally:
            state.task_groups.remove(tg)
            state.context_left(tg)
            with anyio.CancelScope(shield=True):
                await rt._release(state, outcome)
        if exit_error is not None:
            exit_error.__context__ = exc_val
            raise exit_error
        return suppressed


class BaseRuntime(Generic[S]):
    """Sessions, signals and closing, shared by the in-process and journaled runtimes."""

    name = "base"

    def __init__(self) -> None:
        self._current: ContextVar[S | None] = ContextVar(
            f"jeevesagent_session_{id(self):x}", default=None
        )
        self._states: dict[str, S] = {}
        self._mailbox = Mailbox()
        self._closed = False

    # -- to implement ----------------------------------------------------------------------------
    def _new_state(self, session_id: str) -> S:
        raise NotImplementedError

    async def _load_state(self, state: S, wait: float | None) -> None:
        """Fill a new state (e.g. from the journal) before the first context uses it."""

    async def _finish_state(self, state: S, exc: BaseException | None) -> None:
        """Called when the last context of a session exits."""

    def _context_entered(self, state: S, tg: TaskGroup) -> None:
        """Called when a ``session()`` context is entered, with its task group."""

    async def _context_exiting(self, state: S) -> None:
        """Called (shielded) when a ``session()`` context exits, before its task group ends."""

    def _session_object(self, state: S) -> Any:
        raise NotImplementedError

    # -- sessions --------------------------------------------------------------------------------
    def _check_open(self, session_id: str | None = None, step: str | None = None) -> None:
        if self._closed:
            raise StoreClosedError(
                f"{type(self).__name__} is closed; create a new runtime to open sessions.",
                session_id=session_id,
                step=step,
            )

    def session(self, session_id: str, *, wait: float | None = None) -> _SessionContext[S]:
        """Open a session: ``async with runtime.session("order-42") as session: ...``.

        Inside, ``step``/``stream_step``/signal waits belong to this session, in this task and in
        every task started from it. Nested or concurrent contexts of one id share one state.
        The session is an anyio task group: an exception from the body comes out unchanged.

        :param session_id: names the run; opening it again resumes it (recorded steps replay).
        :param wait: with a journaled store, how many seconds to wait for the claim when another
            runtime holds the session (``None``: do not wait).
        :raises InvalidNameError: ``session_id`` is not a valid name (nothing is opened).
        :raises SessionBusyError: another live runtime holds the session (after ``wait``), or
            the claim was lost while the session ran.
        :raises StoreClosedError: the runtime was closed.

        Example::

            async with rt.session("order-42"):
                plan = await rt.step("plan", call_model, "ship order 42")
        """
        check_session_id(session_id)
        return _SessionContext(self, session_id, wait)

    def current_session_id(self) -> str | None:
        """The id of the session the calling task runs in, or ``None``."""
        state = self._current.get()
        return None if state is None else state.id

    async def _acquire(self, session_id: str, wait: float | None = None) -> S:
        while True:
            self._check_open(session_id)
            state = self._states.get(session_id)
            if state is None:
                break
            # Another context of this id exists (or is loading): share its state.
            state.refs += 1
            try:
                await state.ready.wait()
            except BaseException:
                state.refs -= 1
                raise
            if state.error is None:
                return state
            # Its load failed (or was cancelled) in another task. Never re-raise that task's
            # exception object here: try the load again, in this task.
            state.refs -= 1
        state = self._new_state(session_id)
        state.refs = 1
        self._states[session_id] = state
        try:
            await self._load_state(state, wait)
        except BaseException as exc:
            state.error = exc
            if self._states.get(session_id) is state:
                del self._states[session_id]
            raise
        finally:
            state.ready.set()
        return state

    async def _release(self, state: S, exc: BaseException | None = None) -> None:
        state.refs -= 1
        if state.refs == 0:
            if self._states.get(state.id) is state:
                del self._states[state.id]
            await self._finish_state(state, exc)

    # -- signals ---------------------------------------------------------------------------------
    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        """Send a signal: queued per (session, name), received by exactly one waiter, FIFO."""
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        self._mailbox.put(session_id, name, payload)

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the next signal ``name`` of the session; ``TimeoutError`` after ``timeout``."""
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        return await self._mailbox.get(session_id, name, timeout)

    def poll_signal(self, session_id: str, name: str) -> Any:
        """Take the next queued signal ``name`` without waiting, or ``None`` if none is queued."""
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        return self._mailbox.get_nowait(session_id, name)[1]

    # -- closing ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Release what the runtime owns. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._mailbox.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

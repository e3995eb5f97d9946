"""``DBOSRuntime``: the §2 surface (sessions, steps, stream steps, signals, sleep) over DBOS
Transact, each session one DBOS workflow in DBOS's system database (SQLite or Postgres).

Importing this module does not import ``dbos``; making a ``DBOSRuntime`` does (or raises an
``ImportError`` naming the extra to install). How a session maps onto DBOS:

* ``async with rt.session(sid)`` runs the generic workflow ``jeevesagent.session`` with workflow id
  ``sid`` (``bridge``) and hands the body's DBOS calls to it. A body that returns completes the
  workflow (SUCCESS); one that raises, or is cancelled, leaves it PENDING, and the next
  ``session(sid)`` resumes it (``DBOS.resume_workflow_async``): DBOS replays recorded steps.
* A step is a DBOS step named by its journal key (``s:<name>:<fingerprint>`` or
  ``k:<idempotency key>``), so DBOS's own check -- same position, same name -- also checks the
  arguments; a divergence is a ``JournalMismatchError``. ``fn`` runs in the caller's task (its
  context variables, its cancellation); an exception or a cancellation records nothing.
* DBOS never runs a finished workflow id again: a session that completed opens replay-only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import pickle
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from types import ModuleType
from typing import Any

import anyio

from .._core.base import BaseRuntime, BaseSession, SessionState
from .._core.keys import fingerprint, idempotency_journal_key, step_journal_key
from .._core.names import check_name, check_signal_target
from .._core.streams import call_step_fn, open_producer
from .._errors import JournalMismatchError, RuntimeJournalError, ValueEncodingError

__all__ = ["DBOSRuntime", "DBOSSession"]

_EXTRA = "pip install 'jeevesagent[dbos]'"
_FINISHED = frozenset({"SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"})
_SIGNAL = "jeevesagent.signal"  # signals are sent as (_SIGNAL, payload): None is a payload too
_FOREVER = 24 * 3600.0  # one recv of a wait without timeout; the wait loops over them


def _load_bridge() -> ModuleType:
    try:
        return importlib.import_module("jeevesagent.runtime._dbos.bridge")
    except ModuleNotFoundError as exc:
        if exc.name != "dbos" and not (exc.name or "").startswith("dbos."):
            raise
        raise ImportError(
            f"DBOSRuntime needs DBOS Transact, which is not installed: {_EXTRA}"
        ) from exc


def _check_system_database(url: str | None) -> None:
    """DBOS 3.4 fills its SQLite system tables' timestamps with ``unixepoch('subsec')`` on Python
    3.12 and newer, which SQLite has only from 3.42: on an older SQLite every launch fails deep
    in DBOS (``NOT NULL constraint failed: application_versions.version_timestamp``). Refuse
    that here, saying why and what works instead."""
    if url is None or not url.startswith("sqlite") or sys.version_info < (3, 12):
        return
    if sqlite3.sqlite_version_info < (3, 42, 0):
        raise RuntimeError(
            f"DBOSRuntime({url!r}): DBOS 3.4 needs SQLite 3.42 or newer for a SQLite system "
            f"database on Python {sys.version_info[0]}.{sys.version_info[1]} (it uses "
            f"unixepoch('subsec')), and this Python's sqlite3 is SQLite "
            f"{sqlite3.sqlite_version}. Use a Postgres system database, a Python built with a "
            "newer SQLite, or Python 3.11."
        )


def _require_asyncio(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"DBOSRuntime.{what} needs asyncio: DBOS Transact runs on asyncio only. Under trio, "
            "use SqliteRuntime or PostgresRuntime (jeevesagent's own stores run on both)."
        ) from None


class DBOSSession(BaseSession):
    """A session of a :class:`DBOSRuntime` (one DBOS workflow): ``.id``, ``deliver()``."""


class _DBOSState(SessionState):
    def __init__(self, session_id: str, runtime: DBOSRuntime) -> None:
        super().__init__(session_id)
        self.session = DBOSSession(session_id, runtime)
        self.channel: Any = None  # bridge.Channel of the session's workflow, while it runs
        self.finished: str | None = None  # DBOS status of a finished workflow (replay-only)
        self.recorded: dict[str, Any] = {}  # a finished workflow's steps, by journal key
        self.done: dict[str, Any] = {}  # keys recorded or replayed by this run
        self.running: dict[str, anyio.Event] = {}


class DBOSRuntime(BaseRuntime[_DBOSState]):
    """Sessions as DBOS workflows: ``dbos workflow list`` shows them, ``dbos workflow steps``
    their steps. asyncio only. DBOS is one per process, and so is this runtime.

    ``system_database_url``: DBOS's system database (``sqlite:///path.sqlite3`` or a Postgres
    URL). ``application_version``: passed to DBOS (see docs/guides/integrations.md: DBOS would
    otherwise hash only this package's one generic workflow, so every deployment shares a
    version). ``config``: more
    ``DBOSConfig`` keys. ``launch=False`` uses a DBOS the application configures and launches
    itself (make the runtime before ``DBOS.launch()``, so its workflow is registered).
    """

    name = "dbos"

    def __init__(
        self,
        system_database_url: str | None = None,
        *,
        app_name: str = "jeevesagent",
        application_version: str | None = None,
        config: Mapping[str, Any] | None = None,
        launch: bool = True,
    ) -> None:
        super().__init__()
        self._bridge = _load_bridge()
        _check_system_database(system_database_url)
        conf: dict[str, Any] = {"name": app_name, **(config or {})}
        if system_database_url is not None:
            conf["system_database_url"] = system_database_url
        if application_version is not None:
            conf["application_version"] = application_version
        # An executor id of its own: DBOS's launch-time recovery then leaves sessions alone, and
        # a session resumes when the application opens it again, in the application's code.
        conf.setdefault("executor_id", f"jeevesagent-{uuid.uuid4().hex[:12]}")
        self._config = conf
        self._launch = launch
        self._launched = False

    async def _ensure_launched(self, what: str) -> None:
        _require_asyncio(what)
        self._check_open()
        if self._launch and not self._launched:
            from dbos import DBOS

            DBOS(config=self._config)  # type: ignore[arg-type]
            DBOS.launch()
            self._launched = True

    # -- sessions --------------------------------------------------------------------------------
    def _new_state(self, session_id: str) -> _DBOSState:
        return _DBOSState(session_id, self)

    def _session_object(self, state: _DBOSState) -> DBOSSession:
        return state.session

    async def _load_state(self, state: _DBOSState, wait: float | None) -> None:
        from dbos import DBOS, SetWorkflowID

        await self._ensure_launched("session")
        b, sid = self._bridge, state.id
        status = await DBOS.get_workflow_status_async(sid)
        if status is not None and status.name != b.WORKFLOW_NAME:
            raise JournalMismatchError(
                f"DBOS workflow {sid!r} runs {status.name!r}, not a jeevesagent session: "
                "choose another session id.",
                session_id=sid,
            )
        if status is not None and status.status in _FINISHED:
            steps = await DBOS.list_workflow_steps_async(sid)
            state.recorded = {s["function_name"]: s["output"] for s in steps if not s["error"]}
            state.finished = status.status
            return
        arrived = b.arrival(sid)
        if not arrived.done():
            if status is None:
                with SetWorkflowID(sid):
                    await DBOS.start_workflow_async(b.session_workflow, sid)
            else:  # PENDING (crashed, or an earlier body raised) or ENQUEUED: DBOS resumes it
                await DBOS.resume_workflow_async(sid)
        try:
            with anyio.fail_after(wait if wait is not None else 60.0):
                state.channel = await asyncio.wrap_future(arrived)
        except TimeoutError:
            b.forget(sid, arrived)
            raise RuntimeJournalError(
                f"session {sid!r}: its DBOS workflow did not start here within "
                f"{wait if wait is not None else 60.0} s (status {status and status.status}); "
                "another process may be running it -- DBOS has no claim on a running workflow.",
                session_id=sid,
            ) from None

    async def _finish_state(self, state: _DBOSState, exc: BaseException | None) -> None:
        channel = state.channel
        if channel is None:
            return
        state.channel = None
        channel.close(exc is None)
        await asyncio.wrap_future(channel.ended)

    # -- the hand-off ----------------------------------------------------------------------------
    async def _call(self, state: _DBOSState, op: Callable[[], Any], step: str) -> Any:
        """Run ``op()`` in the session's workflow task (where DBOS's context is) and return its
        result; a cancellation of the caller cancels it there."""
        request = state.channel.submit(op)
        try:
            return await asyncio.wrap_future(request.future)
        except self._bridge.Unrecorded as exc:
            raise exc.error from None
        except asyncio.CancelledError:
            state.channel.cancel(request)
            raise
        except Exception as exc:
            raise self._translate(exc, state.id, step) from exc

    def _translate(self, exc: Exception, sid: str, step: str) -> Exception:
        from dbos import error

        if isinstance(exc, error.DBOSUnexpectedStepError | error.DBOSStepNondeterminismError):
            return JournalMismatchError(
                f"session {sid!r}, step {step!r}: DBOS recorded another step at this position "
                f"({exc}). DBOS matches steps by position and jeevesagent's key (name and "
                "arguments): run the session's steps in the same order, with the same arguments.",
                session_id=sid,
                step=step,
            )
        if isinstance(exc, error.DBOSNonExistentWorkflowError):
            return RuntimeJournalError(
                f"session {sid!r} does not exist in DBOS yet, so signal {step!r} cannot be "
                "sent: DBOS delivers messages only to a workflow it has; open the session first.",
                session_id=sid,
                step=step,
            )
        return exc

    async def _record(self, state: _DBOSState, key: str, name: str, run: Callable[[], Any]) -> Any:
        """The result of the step with journal ``key``: replayed, or ``run()`` and recorded."""
        while True:
            if key in state.done:
                return state.done[key]
            running = state.running.get(key)
            if running is None:
                break
            await running.wait()  # the same key in flight in this session: its result, or retry
        if state.finished is not None:
            if key in state.recorded:
                state.done[key] = state.recorded[key]
                return state.recorded[key]
            raise JournalMismatchError(
                f"session {state.id!r} ended in DBOS ({state.finished}) and step {name!r} is not "
                "recorded in it: DBOS never runs a finished workflow id again. Use a new session "
                "id (or copy this one with DBOS.fork_workflow).",
                session_id=state.id,
                step=name,
            )
        state.running[key] = event = anyio.Event()
        try:
            value = await self._handshake(state, key, name, run)
            state.done[key] = value
            return value
        finally:
            del state.running[key]
            event.set()

    async def _handshake(
        self, state: _DBOSState, key: str, name: str, run: Callable[[], Any]
    ) -> Any:
        shake = _Handshake(self, state, key, name)
        ran, value = await shake.start()
        if not ran:
            return value
        try:
            value = await run()
        except BaseException as exc:
            shake.abandon(exc)
            raise
        return await shake.commit(value)

    # -- steps -----------------------------------------------------------------------------------
    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once per session and key; DBOS records the result."""
        state = self._current.get()
        sid = None if state is None else state.id
        check_name("step name", name, sid)
        if idempotency_key is not None:
            check_name("idempotency key", str(idempotency_key), sid)
        self._check_open(sid, name)
        if state is None:
            return await call_step_fn(fn, args, kwargs)
        if idempotency_key is not None:
            key = idempotency_journal_key(str(idempotency_key))
        else:
            key = step_journal_key(name, fingerprint(args, kwargs, session_id=sid, step=name))
        return await self._record(state, key, name, lambda: call_step_fn(fn, args, kwargs))

    async def stream_step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Yield ``fn``'s chunks; the whole list is recorded as one DBOS step when the producer
        is exhausted (nothing is recorded for a stream that stops early or fails)."""
        state = self._current.get()
        sid = None if state is None else state.id
        check_name("stream step name", name, sid)
        self._check_open(sid, name)
        producer = None if state is not None else await open_producer(fn, args, kwargs)
        if producer is not None:
            async for chunk in producer:
                yield chunk
            return
        assert state is not None
        key = step_journal_key(name, fingerprint(args, kwargs, session_id=sid, step=name))
        if key in state.done or state.finished is not None:
            for chunk in await self._record(state, key, name, _unreachable):
                yield chunk
            return
        shake = _Handshake(self, state, key, name)
        ran, recorded = await shake.start()
        if not ran:
            state.done[key] = recorded
            for chunk in recorded:
                yield chunk
            return
        chunks: list[Any] = []
        try:
            producer = await open_producer(fn, args, kwargs)
            try:
                async for chunk in producer:
                    chunks.append(chunk)
                    yield chunk
            finally:
                aclose = getattr(producer, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
        except BaseException as exc:
            shake.abandon(exc)
            raise
        state.done[key] = await shake.commit(chunks)

    # -- signals and sleep -----------------------------------------------------------------------
    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        """Send a DBOS message (topic ``name``) to the session's workflow. Sent from inside a
        session, it is a step of the sender's workflow, so a replay does not send it again."""
        from dbos import DBOS

        check_signal_target(session_id, name)
        await self._ensure_launched("signal")
        state = self._current.get()

        async def send() -> None:
            await DBOS.send_async(session_id, (_SIGNAL, payload), topic=name)

        if state is not None and state.channel is not None:
            await self._call(state, send, name)
            return
        try:
            await send()
        except Exception as exc:
            raise self._translate(exc, session_id, name) from exc

    def _receiver(self, session_id: str, name: str) -> _DBOSState:
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        state = self._current.get()
        if state is None or state.id != session_id or state.channel is None:
            raise RuntimeJournalError(
                f"DBOSRuntime receives signal {name!r} of session {session_id!r} only inside "
                f"that session's running body (`async with rt.session({session_id!r})`): DBOS "
                "receives messages inside the workflow they were sent to.",
                session_id=session_id,
                step=name,
            )
        return state

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the next signal ``name`` (DBOS ``recv``); ``TimeoutError`` after
        ``timeout``. DBOS records what it received, and a timeout, so a replay repeats both."""
        from dbos import DBOS

        state = self._receiver(session_id, name)

        async def receive() -> Any:
            if timeout is not None:
                return await DBOS.recv_async(name, timeout_seconds=max(timeout, 0.0))
            while True:
                message = await DBOS.recv_async(name, timeout_seconds=_FOREVER)
                if message is not None:
                    return message

        message = await self._call(state, receive, name)
        if message is None:
            raise TimeoutError(f"session {session_id!r}: no signal {name!r} within {timeout} s")
        if isinstance(message, tuple) and len(message) == 2 and message[0] == _SIGNAL:
            return message[1]
        return message  # sent by DBOS.send_async directly

    def poll_signal(self, session_id: str, name: str) -> Any:
        """Not available: DBOS receives only asynchronously, in the session's workflow task."""
        self._receiver(session_id, name)
        raise RuntimeJournalError(
            f"DBOSRuntime.poll_signal cannot take signal {name!r} of session {session_id!r} "
            "synchronously: DBOS receives in the session's workflow task. Use "
            f"`await rt.wait_for_signal({session_id!r}, {name!r}, timeout=0)` instead.",
            session_id=session_id,
            step=name,
        )

    async def sleep(self, name: str, seconds: float) -> None:
        """A durable sleep (DBOS ``sleep``): a resumed session sleeps only what is left."""
        from dbos import DBOS

        state = self._current.get()
        check_name("sleep name", name, None if state is None else state.id)
        if state is None or state.channel is None:
            await anyio.sleep(seconds)
            return
        await self._call(state, lambda: DBOS.sleep_async(seconds), name)

    async def aclose(self) -> None:
        """Destroy the DBOS instance this runtime launched. Idempotent."""
        if self._closed:
            return
        await super().aclose()
        if self._launched:
            from dbos import DBOS

            DBOS.destroy()


async def _unreachable() -> Any:
    raise AssertionError("a replay-only stream step never runs its producer")


class _Handshake:
    """One recorded step, decided by DBOS at its position: ``start()`` says whether DBOS
    replayed it (``(False, value)``) or the caller must run it (``(True, None)``); then the
    caller ``commit``s the value (DBOS records it) or ``abandon``s (DBOS records nothing)."""

    def __init__(self, rt: DBOSRuntime, state: _DBOSState, key: str, name: str) -> None:
        from dbos import DBOS

        self._rt, self._state, self._name = rt, state, name
        b = self._b = rt._bridge
        self._go: concurrent.futures.Future[tuple[bool, Any]] = concurrent.futures.Future()
        self._outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        go, outcome = self._go, self._outcome

        async def produce() -> Any:  # DBOS found nothing recorded here: the caller runs it
            b.settle(go, (True, None))
            return await asyncio.wrap_future(outcome)

        async def op() -> Any:
            try:
                value = await DBOS.run_step_async({"name": key, "retries_allowed": False}, produce)
            except BaseException as exc:
                b.settle(go, error=exc)
                raise
            b.settle(go, (False, value))
            return value

        self._op = op
        self._request: Any = None

    async def start(self) -> tuple[bool, Any]:
        self._request = self._state.channel.submit(self._op)
        ran, value = await self._wait(self._go)
        return bool(ran), value

    def abandon(self, exc: BaseException) -> None:
        self._b.settle(self._outcome, error=self._b.Unrecorded(exc))

    async def commit(self, value: Any) -> Any:
        self._b.settle(self._outcome, value)
        await self._wait(self._request.future)
        return value

    async def _wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        state, b = self._state, self._b
        try:
            return await asyncio.wrap_future(fut)
        except b.Unrecorded as exc:
            raise exc.error from None
        except asyncio.CancelledError:
            self.abandon(asyncio.CancelledError())
            state.channel.cancel(self._request)
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("dbos"):
                raise self._rt._translate(exc, state.id, self._name) from exc
            if isinstance(exc, pickle.PicklingError | TypeError | AttributeError):
                raise ValueEncodingError(
                    f"session {state.id!r}, step {self._name!r}: DBOS could not serialize the "
                    f"result ({type(exc).__name__}: {exc}); nothing was recorded. Return a "
                    "picklable value.",
                    session_id=state.id,
                    step=self._name,
                ) from exc
            raise

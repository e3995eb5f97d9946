"""Observability: stdlib ``logging`` and, when the application uses it, OpenTelemetry spans.

Logging goes to the ``jeevesagent.runtime`` logger: INFO when a session opens and closes, DEBUG
per step, stream step and signal, WARNING when a session loses its claim or its writes are
fenced off. Only identities are logged (session ids, step and signal names, counts, exception
type names): never a step's arguments, results, chunks or signal payloads.

Spans: ``jeevesagent.session`` per ``session()`` context, ``jeevesagent.step`` and
``jeevesagent.stream_step`` per step inside it. OpenTelemetry is optional and never imported
here: spans are made only when the application has imported ``opentelemetry.trace`` and set a
tracer provider (or names one in ``OTEL_PYTHON_TRACER_PROVIDER``). A session whose span is not
recorded (no provider, or sampled out) makes no step spans; its steps pay one attribute check.

This module implements the hook of :mod:`.hooks` (read there at which points the runtime calls
it) and knows nothing of the runtime's classes beyond those interfaces. Every hook runs in the task
of the code it observes: a span attached as the current context is detached in the same task,
before the step or session it belongs to returns.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import SessionBusyError, Suspension
from .._policy import JournaledFailure, StepPolicy
from .streams import StreamStep

if TYPE_CHECKING:
    from .hooks import ObservedRuntime, ObservedSession

__all__ = [
    "DEBUG",
    "SessionScope",
    "StepRun",
    "StreamRun",
    "log",
    "stream_step",
]

log = logging.getLogger("jeevesagent.runtime")
DEBUG = logging.DEBUG
INFO = logging.INFO

TRACER_NAME = "jeevesagent.runtime"
_STORE_NAMES = {
    "InMemoryJournalStore": "memory",
    "SqliteJournalStore": "sqlite",
    "PostgresJournalStore": "postgres",
}

# (provider, tracer) of the last provider seen: a tracer is made once per provider.
_tracer_cache: tuple[Any, Any] | None = None


def _trace_module() -> Any:
    """``opentelemetry.trace`` if the application uses OpenTelemetry, else ``None``.

    A tracer provider can only be set through ``opentelemetry.trace`` (or the environment), so
    when that module was never imported there is nothing to report to and nothing is imported.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None and "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:
        try:
            trace = importlib.import_module("opentelemetry.trace")
        except ImportError:
            return None
    return trace


def _tracer() -> Any:
    """The tracer of the configured provider, or ``None`` when no provider is set."""
    global _tracer_cache
    trace = _trace_module()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # not configured: every span would be a no-op
    cached = _tracer_cache
    if cached is None or cached[0] is not provider:
        cached = _tracer_cache = (provider, provider.get_tracer(TRACER_NAME))
    return cached[1]


def _attach(span: Any) -> Any:
    """Make ``span`` the current OpenTelemetry context; returns the token for ``_detach``."""
    context = sys.modules["opentelemetry.context"]
    trace = sys.modules["opentelemetry.trace"]
    return context.attach(trace.set_span_in_context(span))


def _detach(token: Any) -> None:
    sys.modules["opentelemetry.context"].detach(token)


def _is_cancel(exc: BaseException) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[1] is None
    return isinstance(exc, cancelled)


def _status(exc: BaseException | None) -> str:
    if exc is None:
        return "completed"
    if isinstance(exc, Suspension):
        return "waiting"
    return "cancelled" if _is_cancel(exc) else "failed"


def _end_span(span: Any, exc: BaseException | None) -> None:
    """End ``span``: an exception is recorded as an error, a cancellation is not."""
    if exc is not None and span.is_recording():
        if _is_cancel(exc):
            span.set_attribute("jeevesagent.cancelled", True)
        else:
            trace = sys.modules["opentelemetry.trace"]
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__qualname__))
    span.end()


def store_name(runtime: ObservedRuntime) -> str:
    """``memory``/``sqlite``/``postgres`` for the bundled stores, else the store's class name
    (``none`` for a runtime without a journal)."""
    store = getattr(runtime, "store", None)
    if store is None:
        return "none"
    cls = type(store).__name__
    return _STORE_NAMES.get(cls, cls)


def _attributes(runtime: ObservedRuntime, session_id: str) -> dict[str, Any]:
    return {
        "jeevesagent.session_id": session_id,
        "jeevesagent.store": store_name(runtime),
        "jeevesagent.runtime": runtime.name,
    }


def _start_step_span(
    state: ObservedSession, runtime: ObservedRuntime, span_name: str, step: str, replayed: bool
) -> Any:
    attributes = _attributes(runtime, state.id)
    attributes["jeevesagent.step"] = step
    attributes["jeevesagent.replayed"] = replayed
    return state.tracer.start_span(span_name, attributes=attributes)


# -- sessions -------------------------------------------------------------------------------------


class SessionScope:
    """What one ``session()`` context reports: its span (the current context of the entering task
    from ``__aenter__`` to ``__aexit__``), and -- for the first and the last context of a session
    -- the "opened" and "closed" log lines."""

    __slots__ = ("_runtime", "_session_id", "_span", "_token")

    def __init__(self, runtime: ObservedRuntime, session_id: str) -> None:
        self._runtime = runtime
        self._session_id = session_id
        self._span: Any = None
        self._token: Any = None
        tracer = _tracer()
        if tracer is not None:
            self._span = tracer.start_span(
                "jeevesagent.session", attributes=_attributes(runtime, session_id)
            )
            self._token = _attach(self._span)

    def opened(self, state: ObservedSession, first: bool) -> None:
        """The context was entered (``first``: it loaded the session)."""
        span = self._span
        recording = span is not None and span.is_recording()
        if recording and state.tracer is None:
            state.tracer = _tracer()
        if not (recording or (first and log.isEnabledFor(INFO))):
            return
        # None when the runtime does not load a journal up front (no journal, or a store read
        # per step).
        loaded = state.journal_counts()
        if recording and loaded is not None:
            steps, streams, receipts = loaded
            span.set_attribute("jeevesagent.resumed", bool(steps or streams))
            span.set_attribute("jeevesagent.loaded_steps", steps)
            span.set_attribute("jeevesagent.loaded_streams", streams)
        if not first:
            return
        store, runtime = store_name(self._runtime), self._runtime.name
        if loaded is None:
            how = "no journal" if store == "none" else "steps are read from the store as they run"
            log.info("session %r opened (store=%s, runtime=%s, %s)", state.id, store, runtime, how)
        else:
            steps, streams, receipts = loaded
            log.info(
                "session %r opened (store=%s, runtime=%s, resumed=%s: %d recorded steps, "
                "%d streams, %d signal receipts loaded)",
                state.id,
                store,
                runtime,
                bool(steps or streams),
                steps,
                streams,
                receipts,
            )

    def close(self, state: ObservedSession | None, exc: BaseException | None) -> None:
        """The context exited (``state`` None: it failed to open); ``exc`` is what propagates."""
        try:
            if state is not None and state.refs == 0:
                for stream in list(state.open_streams):
                    stream.ended(None, closed=True)
                if log.isEnabledFor(INFO):
                    log.info(
                        "session %r closed (status=%s, steps executed=%d, replayed=%d)",
                        state.id,
                        _status(exc),
                        state.executed,
                        state.replayed,
                    )
        finally:
            span, self._span = self._span, None
            if span is not None:
                _detach(self._token)
                span.set_attribute("jeevesagent.status", _status(exc))
                _end_span(span, exc)


# -- steps ----------------------------------------------------------------------------------------


def step_replayed(runtime: ObservedRuntime, state: ObservedSession, name: str, value: Any) -> None:
    """A step returned its journaled result (call only when ``state.tracer`` is set or DEBUG is
    enabled: the caller counts the replay and checks that, to keep replay cheap)."""
    failed = isinstance(value, JournaledFailure)
    if state.tracer is not None:
        span = _start_step_span(state, runtime, "jeevesagent.step", name, True)
        if failed and span.is_recording():
            trace = sys.modules["opentelemetry.trace"]
            span.set_status(trace.Status(trace.StatusCode.ERROR, value.type_name))
        span.end()
    if log.isEnabledFor(DEBUG):
        what = "replayed (a journaled failure)" if failed else "replayed"
        log.debug("session %r: step %r %s", state.id, name, what)


class StepRun:
    """A step that runs ``fn``: while it runs and its result commits, its span (if the session is
    traced) is the current context. ``fail(exc)`` on an exception, then ``end()`` -- always, in
    the same task."""

    __slots__ = ("_error", "_name", "_runtime", "_span", "_state", "_token")

    def __init__(self, runtime: ObservedRuntime, state: ObservedSession | None, name: str) -> None:
        self._runtime = runtime
        self._state = state
        self._name = name
        self._error: BaseException | None = None
        self._span: Any = None
        self._token: Any = None
        if state is not None and state.tracer is not None:
            self._span = _start_step_span(state, runtime, "jeevesagent.step", name, False)
            self._token = _attach(self._span)

    def fail(self, exc: BaseException) -> None:
        self._error = exc

    def end(self) -> None:
        state, exc = self._state, self._error
        if state is None:
            return
        span, self._span = self._span, None
        if span is not None:
            _detach(self._token)
            _end_span(span, exc)
        if exc is None:
            state.executed += 1
        if log.isEnabledFor(DEBUG):
            if exc is None:
                what = "executed"
            elif _is_cancel(exc):
                what = "cancelled"
            else:
                what = f"failed ({type(exc).__qualname__})"
            log.debug("session %r: step %r %s", state.id, self._name, what)


# -- stream steps ---------------------------------------------------------------------------------


def stream_step(
    runtime: ObservedRuntime,
    state: ObservedSession | None,
    name: str,
    start: Callable[[], Awaitable[tuple[list[Any] | None, AsyncIterator[Any] | None]]],
    complete: Callable[[list[Any]], Awaitable[None]] | None,
    policy: StepPolicy | None = None,
    reopen: Callable[[], Awaitable[AsyncIterator[Any]]] | None = None,
    where: tuple[str | None, str] = (None, "?"),
) -> StreamStep[Any]:
    """A ``StreamStep``, with a :class:`StreamRun` as its hook when there is something to report
    (a traced session, or INFO logging for the session's counts); else without a hook, and
    without any per-chunk cost."""
    hook = None
    if state is not None and (state.tracer is not None or log.isEnabledFor(INFO)):
        hook = StreamRun(runtime, state, name)
    return StreamStep(start, complete, policy, reopen, where, hook)


class StreamRun:
    """The report of one stream step (its ``StreamHook``): a ``jeevesagent.stream_step`` span
    from its first pull until it is exhausted, fails, is closed or its session closes (the span is
    the current context only during each pull, never across a ``yield`` of the consumer). Held
    by the session from the first pull until it ends, so that a stream dropped unfinished is
    still reported, as "closed early", when the session closes."""

    __slots__ = ("name", "replayed", "runtime", "span", "state")

    def __init__(self, runtime: ObservedRuntime, state: ObservedSession, name: str) -> None:
        self.runtime = runtime
        self.state = state
        self.name = name
        self.replayed = False
        self.span: Any = None

    def started(self) -> None:
        state = self.state
        if state.tracer is not None:
            self.span = _start_step_span(
                state, self.runtime, "jeevesagent.stream_step", self.name, False
            )
        state.open_streams.add(self)

    def replaying(self) -> None:
        self.replayed = True

    def pull_started(self) -> Any:
        span = self.span
        return _attach(span) if span is not None else None

    def pull_ended(self, token: Any) -> None:
        if token is not None:
            _detach(token)

    def ended(self, exc: BaseException | None, closed: bool = False) -> None:
        state = self.state
        if self not in state.open_streams:
            return  # not started, or ended already (by its session closing)
        state.open_streams.discard(self)
        replayed = self.replayed
        span, self.span = self.span, None
        if span is not None:
            span.set_attribute("jeevesagent.replayed", replayed)
            if closed:
                span.set_attribute("jeevesagent.closed_early", True)
            _end_span(span, exc)
        if exc is None and not closed:
            if replayed:
                state.replayed += 1
            else:
                state.executed += 1
        if log.isEnabledFor(DEBUG):
            if exc is not None:
                what = "cancelled" if _is_cancel(exc) else f"failed ({type(exc).__qualname__})"
            elif closed:
                what = "closed early" if replayed else "closed early (nothing recorded)"
            else:
                what = "replayed" if replayed else "executed"
            log.debug("session %r: stream step %r %s", state.id, self.name, what)


# -- signals and claims ---------------------------------------------------------------------------


def signal_sent(session_id: str, name: str) -> None:
    if log.isEnabledFor(DEBUG):
        log.debug("session %r: signal %r sent", session_id, name)


def signal_received(session_id: str, name: str) -> None:
    if log.isEnabledFor(DEBUG):
        log.debug("session %r: signal %r received", session_id, name)


def signal_duplicate(session_id: str, name: str) -> None:
    log.warning(
        "session %r: a copy of signed signal %r that the session received before was skipped "
        "(someone with write access to the store duplicated it)",
        session_id,
        name,
    )


def claim_taken_over(session_id: str, dead_owner: str) -> None:
    log.info(
        "session %r: took over the claim of owner %s, whose process is gone", session_id, dead_owner
    )


def claim_renewal_failed(session_id: str, exc: BaseException) -> None:
    if _is_cancel(exc):
        return
    if isinstance(exc, SessionBusyError):
        log.warning(
            "session %r: this runtime lost its claim (the lease expired and another runtime "
            "took the session over); the session is stopped here",
            session_id,
        )
    else:
        log.warning(
            "session %r: renewing the claim failed (%s); the session is stopped here",
            session_id,
            type(exc).__qualname__,
        )


def claim_renewal_retried(session_id: str, exc: BaseException) -> None:
    log.warning(
        "session %r: renewing the claim failed (%s: %s); retrying while the lease holds",
        session_id,
        type(exc).__qualname__,
        exc,
    )


def release_failed(session_id: str, exc: BaseException) -> None:
    log.warning(
        "session %r: releasing the claim failed (%s); it ends when its lease runs out",
        session_id,
        type(exc).__qualname__,
    )


def commit_failed(session_id: str, records: int, exc: BaseException, buffered: bool) -> None:
    """A journal commit raised: warn when the writes were fenced off (another runtime holds the
    claim) or when buffered records were lost (the caller of ``step`` has already returned)."""
    if isinstance(exc, SessionBusyError):
        log.warning(
            "session %r: %d journal records were refused (fenced): another runtime holds the "
            "session's claim",
            session_id,
            records,
        )
    elif buffered:
        log.warning(
            "session %r: %d buffered journal records could not be committed (%s); the session "
            "stops at its next step",
            session_id,
            records,
            type(exc).__qualname__,
        )


def signal_fenced(session_id: str, name: str) -> None:
    log.warning(
        "session %r: signal %r was not taken (fenced): another runtime holds the session's claim",
        session_id,
        name,
    )

"""The observability hook: the points at which the runtime reports what it does, as interfaces.

The core calls these; :mod:`.observe` implements them (logging, OpenTelemetry spans, the
session's counters) and knows nothing of the core's classes. Every hook runs in the task of the
code it observes, and costs next to nothing when there is nothing to report: the caller holds
no hook at all then (``None``), or checks ``tracer``/the log level first.

The points:

* a session context opened and closed: ``observe.SessionScope`` (made by ``BaseRuntime``);
* a step started, then failed or finished: ``observe.StepRun`` (:class:`StepHook`);
* a step replayed its journaled result: ``observe.step_replayed``;
* a stream step started, replays its journal, pulls, and ended (exhausted, failed, closed
  early): :class:`StreamHook`, given to ``StreamStep`` by ``observe.stream_step``;
* a signal sent, received, skipped as a duplicate or fenced off; a claim taken over, lost or
  retried, a release or a commit failed: the functions of the same names in ``observe``.

This module imports nothing from the package.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ObservedRuntime", "ObservedSession", "StepHook", "StreamHook"]


class ObservedRuntime(Protocol):
    """What a hook reads of a runtime."""

    @property
    def name(self) -> str:
        """``inproc``, ``journaled``..."""
        ...


class ObservedSession(Protocol):
    """What a hook reads and counts of one session's state."""

    id: str
    refs: int  # open contexts; 0 once the last one exited
    executed: int  # steps (and stream steps) this process ran to completion
    replayed: int  # steps (and stream steps) that returned their journaled result
    tracer: Any  # the tracer when the session's span is recorded, else None
    open_streams: set[Any]  # stream reports not ended yet

    def journal_counts(self) -> tuple[int, int, int] | None:
        """(steps, streams, signal receipts) of the journal held in memory, or ``None``."""
        ...


class StepHook(Protocol):
    """One step that runs its function: made when it starts, ``fail(exc)`` on an exception,
    then ``end()`` -- always, in the same task."""

    def fail(self, exc: BaseException) -> None: ...

    def end(self) -> None: ...


class StreamHook(Protocol):
    """What a ``StreamStep`` reports, in this order: ``started()`` at its first pull;
    ``replaying()`` if the journal holds its chunks; around every pull ``pull_started()`` and
    ``pull_ended(token)`` with what the former returned (the pull's context, never held across
    the consumer's ``yield``); ``ended(exc)`` once it is exhausted (``None``) or failed, or
    ``ended(None, closed=True)`` when it is closed. An ``ended`` after the first is ignored,
    and so is one without ``started``."""

    def started(self) -> None: ...

    def replaying(self) -> None: ...

    def pull_started(self) -> Any: ...

    def pull_ended(self, token: Any) -> None: ...

    def ended(self, exc: BaseException | None, closed: bool = False) -> None: ...

"""The in-process runtime: sessions, streams and signals with no durability. Every step runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ._base import (
    BaseRuntime,
    BaseSession,
    SessionState,
    StreamStep,
    call_step_fn,
    open_producer,
)

__all__ = ["InProcRuntime", "InProcSession"]


class InProcSession(BaseSession):
    """A session of an :class:`InProcRuntime`: ``.id`` and ``await deliver(name, payload)``."""


class _InProcState(SessionState):
    def __init__(self, session_id: str, runtime: InProcRuntime) -> None:
        super().__init__(session_id)
        self.session = InProcSession(session_id, runtime)


class InProcRuntime(BaseRuntime[_InProcState]):
    """No journal: ``step`` and ``stream_step`` always run ``fn``. For tests and local runs."""

    name = "inproc"

    def _new_state(self, session_id: str) -> _InProcState:
        return _InProcState(session_id, self)

    def _session_object(self, state: _InProcState) -> InProcSession:
        return state.session

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (awaiting it if it is async) and return its result."""
        self._check_open(self.current_session_id(), name)
        return await call_step_fn(fn, args, kwargs)

    def stream_step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> StreamStep:
        """Yield what ``fn(*args, **kwargs)`` yields; the producer is closed when this stops."""
        self._check_open(self.current_session_id(), name)

        async def start() -> tuple[None, AsyncIterator[Any]]:
            return None, await open_producer(fn, args, kwargs)

        return StreamStep(start, None)

"""The in-process runtime: sessions, streams and signals with no durability. Every step runs."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from .._policy import StepPolicy, policy_of, run_with_policy
from . import observe as _observe
from .base import BaseRuntime, BaseSession, SessionState
from .hooks import StepHook
from .names import check_name, check_signal_target
from .streams import StreamStep, call_step_fn, open_producer

__all__ = ["InProcRuntime", "InProcSession"]

P = ParamSpec("P")
T = TypeVar("T")


class InProcSession(BaseSession):
    """A session of an :class:`InProcRuntime`: ``.id`` and ``await deliver(name, payload)``."""


class _InProcState(SessionState):
    def __init__(self, session_id: str, runtime: InProcRuntime) -> None:
        super().__init__(session_id)
        self.session = InProcSession(session_id, runtime)


class InProcRuntime(BaseRuntime[_InProcState]):
    """No journal: ``step`` and ``stream_step`` always run ``fn``. For tests and local runs."""

    name = "inproc"

    def __init__(self, *, policy: StepPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy if policy is not None else StepPolicy()

    def _policy_for(self, fn: Callable[..., Any]) -> StepPolicy:
        attached = policy_of(fn)
        return attached.merged_over(self.policy) if attached is not None else self.policy

    def _new_state(self, session_id: str) -> _InProcState:
        return _InProcState(session_id, self)

    def _session_object(self, state: _InProcState) -> InProcSession:
        return state.session

    # Typing of ``step`` (checked by tests/test_typing.py). The precise signature would be
    # ``(name, fn: Callable[P, Awaitable[T]], /, *args: P.args, idempotency_key: str | None = None,
    # **kwargs: P.kwargs) -> T``, but the typing spec (PEP 612) forbids a keyword-only parameter
    # between ``*args: P.args`` and ``**kwargs: P.kwargs``, and mypy rejects it ("Arguments not
    # allowed after ParamSpec.args"), as does pyright. So:
    # - a call that passes ``idempotency_key=`` matches one of the first two overloads: its result
    #   type is still ``fn``'s, but the arguments for ``fn`` are not checked (no ParamSpec there);
    # - every other call matches one of the last two, where ``P`` checks the arguments exactly.
    # The first two come first because ``idempotency_key`` is required there: a call without it
    # falls through to the precise ones (the other order makes mypy call the keyed overloads
    # unreachable). In each pair, the ``Awaitable[T]`` overload comes first, so an async function
    # (or a sync one returning an awaitable, such as a ``with_policy`` wrapper of an async
    # function) gives the awaited ``T``, as the runtime awaits it; any other function gives ``T``.
    # (One parameter ``Callable[P, Awaitable[T]] | Callable[P, T]``, or ``Callable[P, Awaitable[T]
    # | T]``, makes mypy infer ``Never`` for an async function.) Before mypy 2.4, a callable value
    # returning ``Coroutine[Any, Any, X]`` matched both overloads "because of Any" and gave ``Any``
    # (the rule of python/mypy#17331). The implementation takes ``idempotency_key: Any``: through
    # ``P.kwargs``, mypy cannot rule out any type for it.
    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        idempotency_key: str | None,
        **kwargs: Any,
    ) -> T: ...
    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        idempotency_key: str | None,
        **kwargs: Any,
    ) -> T: ...
    @overload
    async def step(
        self, name: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def step(
        self, name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (awaiting it if it is async) and return its result, under
        the step policy (retries, timeouts; failures are not journaled: there is no journal)."""
        check_name("step name", name, self.current_session_id())
        if idempotency_key is not None:
            check_name("idempotency key", str(idempotency_key), self.current_session_id())
        self._check_open(self.current_session_id(), name)
        policy = self._policy_for(fn)
        run: StepHook = _observe.StepRun(self, self._current.get(), name)  # current until end
        try:
            if policy.retry is None and policy.timeout is None and policy.deadline is None:
                return await call_step_fn(fn, args, kwargs)
            return await run_with_policy(
                partial(call_step_fn, fn, args, kwargs),
                policy,
                session_id=self.current_session_id(),
                step=name,
            )
        except BaseException as exc:
            run.fail(exc)
            raise
        finally:
            run.end()

    async def sleep(self, name: str, seconds: float) -> None:
        """Sleep ``seconds`` (nothing is journaled in this runtime)."""
        check_name("sleep name", name, self.current_session_id())
        self._check_open(self.current_session_id(), name)
        await anyio.sleep(seconds)

    # Typing of ``stream_step``: one overload per kind of producer the runtime accepts (an async
    # iterable -- an async generator function --, an awaitable of either, a sync iterable); each
    # gives a ``StreamStep[T]`` that iterates the producer's ``T`` and keeps ``aclose()``.
    @overload
    def stream_step(
        self, name: str, fn: Callable[P, AsyncIterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamStep[T]: ...
    @overload
    def stream_step(
        self,
        name: str,
        fn: Callable[P, Awaitable[AsyncIterable[T] | Iterable[T]]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> StreamStep[T]: ...
    @overload
    def stream_step(
        self, name: str, fn: Callable[P, Iterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamStep[T]: ...
    def stream_step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> StreamStep[Any]:
        """Yield what ``fn(*args, **kwargs)`` yields; the producer is closed when this stops."""
        check_name("stream step name", name, self.current_session_id())
        self._check_open(self.current_session_id(), name)

        async def reopen() -> AsyncIterator[Any]:
            return await open_producer(fn, args, kwargs)

        async def start() -> tuple[None, AsyncIterator[Any]]:
            return None, await reopen()

        where = (self.current_session_id(), name)
        policy = self._policy_for(fn)
        return _observe.stream_step(
            self, self._current.get(), name, start, None, policy, reopen, where
        )

    # -- signals: as in BaseRuntime, logged ------------------------------------------------------
    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        await super().signal(session_id, name, payload)
        _observe.signal_sent(session_id, name)

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        value = await super().wait_for_signal(session_id, name, timeout=timeout)
        _observe.signal_received(session_id, name)
        return value

    def poll_signal(self, session_id: str, name: str) -> Any:
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        got, value = self._mailbox.get_nowait(session_id, name)
        if got:
            _observe.signal_received(session_id, name)
        return value

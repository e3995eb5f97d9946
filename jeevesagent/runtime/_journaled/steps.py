"""The steps of a journaled runtime: ``step``, ``sleep`` and ``stream_step`` in a session -- the
journal key of a call, replay of a recorded result, running the function under its policy, and
recording its result -- and outside any session, the function alone.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

import anyio

from .._core import observe as _observe
from .._core.keys import (
    fingerprint,
    idempotency_journal_key,
    legacy_journal_key,
    step_journal_key,
    timer_journal_key,
)
from .._core.names import check_name
from .._core.streams import (
    StreamPrefix,
    StreamStep,
    call_step_fn,
    open_producer,
    producing,
)
from .._journal.backend import STEP, STREAM
from .._policy import JournaledFailure, StepPolicy, StepTimeoutError, policy_of, run_with_policy
from .livestream import LiveProducer, recorded_prefix
from .recorder import Recorder
from .state import JournaledState

__all__ = ["Steps"]


class Steps:
    """Runs the steps of one runtime's sessions; the runtime's ``strict`` and ``policy`` are
    read at each call.

    :param current: the runtime's current-session context variable
    :param check_open: raises once the runtime is closed
    :param require_open: raises unless a step of the session may run (runtime and store open,
        claim held, no failed write)
    """

    def __init__(
        self,
        runtime: Any,
        recorder: Recorder,
        current: ContextVar[JournaledState | None],
        check_open: Callable[[str | None, str | None], None],
        require_open: Callable[[JournaledState, str], None],
    ) -> None:
        self.runtime = runtime
        self.recorder = recorder
        self.current = current
        self.check_open = check_open
        self.require_open = require_open

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: Any,
    ) -> Any:
        """See :meth:`JournaledRuntime.step`."""
        state = self.current.get()
        sid = None if state is None else state.id
        check_name("step name", name, sid)
        if idempotency_key is not None:
            idempotency_key = str(idempotency_key)
            check_name("idempotency key", idempotency_key, sid)
        policy = self.policy_for(fn)
        if state is None:
            self.check_open(None, name)
            return await self.attempts(fn, args, kwargs, policy, None, name)
        self.require_open(state, name)
        fp = ""
        if idempotency_key is not None:
            key = idempotency_journal_key(idempotency_key)
        else:
            fp = fingerprint(args, kwargs, session_id=state.id, step=name)
            key = step_journal_key(name, fp)
            if self.runtime.strict:
                state.called(name, fp)
        while True:
            row = await self.recorder.lookup_step(state, key)
            if row is None and state.legacy:
                # A journal imported from jeevesagent 0.9.7 keyed steps by name alone.
                legacy = legacy_journal_key(name)
                row = state.steps.get(legacy)
                if row is not None:
                    key = legacy
            if row is not None:
                value = self.recorder.decode(state, key, row)
                state.replayed += 1
                if state.tracer is not None or _observe.log.isEnabledFor(_observe.DEBUG):
                    _observe.step_replayed(self.runtime, state, name, value)
                if isinstance(value, JournaledFailure):
                    raise value.rebuild(state.id, name)
                return value
            if key not in state.inflight:
                break
            # Same key already running in this session: wait for it, then take its result (or,
            # if it failed, run it ourselves). Its event is made by the first such waiter.
            running = state.inflight[key]
            if running is None:
                running = state.inflight[key] = anyio.Event()
            await running.wait()
        if self.runtime.strict and fp:
            state.check_strict(name, fp)
        run = _observe.StepRun(self.runtime, state, name)  # its span is current until run.end()
        state.inflight[key] = None  # running; an event only if someone waits for it
        try:
            try:
                result = await self.attempts(fn, args, kwargs, policy, state.id, name)
            except Exception as exc:
                # A timed-out step records nothing, as documented: the timeout says how long
                # this attempt was allowed, not what the step's outcome is.
                if not policy.journal_failures or isinstance(exc, StepTimeoutError):
                    raise
                # Failed for good: journal the failure so a replay raises it without running.
                failure = JournaledFailure.of(exc)
                data = self.recorder.encode(state, key, failure)
                await self.recorder.record(state, STEP, key, failure, data)
                raise
            data = self.recorder.encode(state, key, result)
            return await self.recorder.record(state, STEP, key, result, data)
        except BaseException as exc:
            run.fail(exc)
            raise
        finally:
            done = state.inflight.pop(key)
            if done is not None:
                done.set()
            run.end()

    def policy_for(self, fn: Callable[..., Any]) -> StepPolicy:
        attached = policy_of(fn)
        default: StepPolicy = self.runtime.policy
        return attached.merged_over(default) if attached is not None else default

    @staticmethod
    async def attempts(
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: StepPolicy,
        session_id: str | None,
        name: str,
    ) -> Any:
        if policy.retry is None and policy.timeout is None and policy.deadline is None:
            return await call_step_fn(fn, args, kwargs)  # the common case, without wrappers
        return await run_with_policy(
            partial(call_step_fn, fn, args, kwargs), policy, session_id=session_id, step=name
        )

    async def sleep(self, name: str, seconds: float) -> None:
        """See :meth:`JournaledRuntime.sleep`."""
        state = self.current.get()
        check_name("sleep name", name, None if state is None else state.id)
        if state is None:
            self.check_open(None, name)
            await anyio.sleep(seconds)
            return
        self.require_open(state, name)
        key = timer_journal_key(name)
        row = await self.recorder.lookup_step(state, key)
        if row is None:
            wake_at = time.time() + seconds
            data = self.recorder.encode(state, key, wake_at)
            wake_at = await self.recorder.record(state, STEP, key, wake_at, data)
        else:
            wake_at = self.recorder.decode(state, key, row)
        left = wake_at - time.time()
        after = state.suspend_after
        if after is None or left <= after:
            await anyio.sleep(max(0.0, left))
            return
        # Under serve: a sleep longer than suspend_after suspends the session once that long
        # has passed (a worker runs it again at wake_at), unless the body does more meanwhile.
        state.waits += 1
        try:
            await anyio.sleep(after)
            left = wake_at - time.time()
            if left > 0 and state.may_suspend():
                raise state.suspend(None, wake_at)
            await anyio.sleep(max(0.0, left))
        finally:
            state.waits -= 1

    def stream_step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StreamStep[Any]:
        """See :meth:`JournaledRuntime.stream_step`."""
        state = self.current.get()
        check_name("stream step name", name, None if state is None else state.id)
        policy = self.policy_for(fn)

        async def reopen() -> AsyncIterator[Any]:
            return await open_producer(fn, args, kwargs)

        if state is None:
            self.check_open(None, name)

            async def run_unjournaled() -> tuple[None, AsyncIterator[Any]]:
                return None, await open_producer(fn, args, kwargs)

            return StreamStep(run_unjournaled, None, policy, reopen, (None, name))
        self.require_open(state, name)
        fp = fingerprint(args, kwargs, session_id=state.id, step=name)
        key = step_journal_key(name, fp)
        if self.runtime.strict:
            state.called(name, fp)
            if key not in state.streams:
                state.check_strict(name, fp)

        interval = self.runtime.stream_flush_interval
        live = interval is not None

        async def open_live(prefix: list[Any]) -> AsyncIterator[Any]:
            if not live:
                return await open_producer(fn, args, kwargs)
            assert interval is not None
            if prefix:
                asked: StreamPrefix | None = StreamPrefix(prefix)
                with producing(asked):
                    producer = await open_producer(fn, args, kwargs)
            else:
                asked = None
                producer = await open_producer(fn, args, kwargs)
            chunks = self.runtime.stream_flush_chunks
            return LiveProducer(producer, self.recorder, state, key, asked, interval, chunks)

        async def start() -> tuple[list[Any] | None, AsyncIterator[Any] | None]:
            self.require_open(state, name)
            recorded = await self.recorder.lookup_stream(state, key)
            if recorded is None and state.legacy and legacy_journal_key(name) in state.streams:
                recorded = await self.recorder.lookup_stream(state, legacy_journal_key(name))
            if recorded is not None:
                return recorded, None
            prefix = recorded_prefix(self.recorder, state, key) if live and state.loaded else []
            return None, await open_live(prefix)

        async def reopen_live() -> AsyncIterator[Any]:  # a retry before any chunk was delivered
            return await open_live([])

        async def complete(chunks: list[Any]) -> None:
            data = self.recorder.encode(state, key, chunks, STREAM, "stream chunks")
            await self.recorder.record(state, STREAM, key, chunks, data)

        return _observe.stream_step(
            self.runtime, state, name, start, complete, policy, reopen_live, (state.id, name)
        )

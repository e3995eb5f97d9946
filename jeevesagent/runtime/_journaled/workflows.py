"""Workflow sessions of a journaled runtime: creating them with their workflow's name and
arguments (``run`` inline, ``start`` for a worker), running a body with its outcome journaled
(or, for ``run`` of a session completed already, reading its recorded result: no claim),
stopping a body that ``cancel`` asked to stop, reading an ended session's outcome (``result``),
and copying a journal's prefix into a new session (``fork``).

Outcomes are journal rows of the session: its arguments at ``w:args`` (the workflow's
``(fingerprint, args, kwargs)``), its return value at ``w:result``, and each failed run's
exception at ``w:failure:N``. The sessions table names the workflow and the status. A body's
outcome row is written with the session's status when the session ends (one commit: see
``ClaimHolder.finish``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import anyio

from .._core.keys import (
    failure_index,
    fingerprint,
    is_signal_receipt,
    is_workflow_key,
    receipt_signal_name,
    step_name_of,
    workflow_args_key,
    workflow_failure_key,
    workflow_result_key,
)
from .._core.registry import running_runtime
from .._core.values import decode_value, encode_value
from .._errors import JournalMismatchError, SessionCancelledError
from .._journal.backend import (
    ENDED_STATUSES,
    STEP,
    STREAM,
    JournalBackend,
    Record,
    Row,
    SessionInfo,
)
from .._policy import JournaledFailure, StepFailedError
from .recorder import Recorder
from .signals import SignalInbox, open_signal, seal_signal
from .state import JournaledState

__all__ = ["Engine", "WorkflowHandle"]

log = logging.getLogger("jeevesagent.runtime")


class WorkflowHandle:
    """A workflow session, by id: ``await handle.result()``, ``.status()``, ``.cancel()``."""

    def __init__(self, engine: Engine, session_id: str) -> None:
        self._engine = engine
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.session_id!r}>"

    async def result(self, timeout: float | None = None) -> Any:
        """Wait until the session ends: see ``JournaledRuntime.result``."""
        return await self._engine.result(self.session_id, timeout)

    async def status(self) -> str:
        """The session's status now (``pending``, ``running``, ``completed``...)."""
        info = await self._engine.info(self.session_id)
        return info.status

    async def cancel(self) -> None:
        """Cancel the session: see ``JournaledRuntime.cancel``."""
        await self._engine.cancel(self.session_id)


class Engine:
    """Creates, runs, cancels, reads and forks the workflow sessions of one runtime."""

    def __init__(
        self,
        runtime: Any,
        backend: JournalBackend,
        recorder: Recorder,
        inbox: SignalInbox,
        states: Mapping[str, JournaledState],
        open_session: Callable[[str], AbstractAsyncContextManager[Any]],
        owner_id: str,
        poll_interval: float,
    ) -> None:
        self.runtime = runtime
        self.backend = backend
        self.recorder = recorder
        self.inbox = inbox
        self.states = states
        self.open_session = open_session
        self.owner_id = owner_id
        self.poll_interval = poll_interval

    # -- creating --------------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        session_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        owner: str | None,
    ) -> SessionInfo:
        """Create the session (or find it) and check that it runs ``name`` with these
        arguments; raises :class:`JournalMismatchError` otherwise."""
        fp = fingerprint(args, kwargs, session_id=session_id, step="workflow arguments")
        key = workflow_args_key()
        data = encode_value(
            self.backend.codec,
            (fp, args, kwargs),
            session_id=session_id,
            step=key,
            what="arguments",
        )
        record = Record(session_id, STEP, key, data, time.time())
        self.backend.check_open(session_id, key)
        info, row = await self.backend.create_session(
            session_id, name, record, owner, self.runtime.lease
        )
        if info.workflow != name or row is None:
            what = (
                f"runs workflow {info.workflow!r}"
                if info.workflow is not None
                else "is a plain session (opened with session(), not made by run or start)"
            )
            raise JournalMismatchError(
                f"session {session_id!r} {what}, not {name!r}: a session runs one workflow. "
                "Use another session id.",
                session_id=session_id,
            )
        recorded_fp = self.arguments(session_id, row)[0]
        if recorded_fp != fp:
            raise JournalMismatchError(
                f"session {session_id!r} of workflow {name!r} was made with other arguments "
                f"(fingerprint {recorded_fp}, not {fp}): a session runs with the arguments it "
                "was made with. Use another session id for other arguments.",
                session_id=session_id,
            )
        return info

    def arguments(self, session_id: str, row: Row) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """The recorded ``(fingerprint, args, kwargs)`` of a workflow session."""
        fp, args, kwargs = decode_value(
            self.backend.codec, row.data, session_id=session_id, step=workflow_args_key()
        )
        return str(fp), tuple(args), dict(kwargs)

    # -- running ---------------------------------------------------------------------------------
    async def run(
        self,
        name: str,
        session_id: str,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """``run``: create the session (or find it, with these arguments) and run its body.

        A session of this workflow completed already, with these arguments, returns its
        recorded result after three point reads (its sessions row, ``w:args``, ``w:result``):
        no claim, no bulk load, nothing written -- a completed session is final. Anything else
        (a new session, another status, other arguments, another workflow) goes through
        :meth:`create` and :meth:`run_body` as before, which raise the same errors as before. A
        session completing concurrently is fine either way: both paths return the recorded
        result (first writer wins)."""
        done = await self._completed_result(name, session_id, args, kwargs)
        if done is not None:
            return decode_value(
                self.backend.codec, done.data, session_id=session_id, step=workflow_result_key()
            )
        await self.create(name, session_id, args, kwargs, self.owner_id)
        return await self.run_body(session_id, fn, args, kwargs, wait=None)

    async def _completed_result(
        self, name: str, session_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Row | None:
        """The ``w:result`` row of ``session_id`` if it is a completed session of workflow
        ``name`` made with these arguments; otherwise ``None`` (read only, nothing written)."""
        info = await self.backend.session_info(session_id)
        if info is None or info.status != "completed" or info.workflow != name:
            return None
        row = await self.backend.load_row(session_id, STEP, workflow_args_key())
        fp = fingerprint(args, kwargs, session_id=session_id, step="workflow arguments")
        if row is None or self.arguments(session_id, row)[0] != fp:
            return None  # create() raises the mismatch
        return await self.backend.load_row(session_id, STEP, workflow_result_key())

    async def run_body(
        self,
        session_id: str,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
        wait: float | None,
        suspend_after: float | None = None,
    ) -> Any:
        """Open the session (claim it), and unless it ended already run the workflow body with
        its outcome journaled. ``args=None``: the recorded arguments. ``suspend_after``: see
        ``serve`` (the body may then raise :class:`Suspension`)."""
        state: JournaledState | None = None
        try:
            async with self.open_session(session_id, wait=wait):  # type: ignore[call-arg]
                state = self.states[session_id]
                state.suspend_after = suspend_after
                done = state.steps.get(workflow_result_key())
                if done is None and not state.loaded:
                    done = await self.recorder.lookup_step(state, workflow_result_key())
                if done is not None:
                    state.end_status = "completed"
                    return self.recorder.decode(state, workflow_result_key(), done)
                if args is None or kwargs is None:
                    row = await self.recorder.lookup_step(state, workflow_args_key())
                    if row is None:
                        raise JournalMismatchError(
                            f"session {session_id!r} has no recorded arguments: it was not "
                            "made by run or start.",
                            session_id=session_id,
                        )
                    _, args, kwargs = self.arguments(session_id, row)
                result, mine = await self._body(state, fn, args, kwargs)
        finally:
            if state is not None and state.outcome:
                # The outcome commits with the session's end (one commit with its status), but
                # another context of the session is still open: the end comes later. Commit it
                # now, as a step's record: nobody hears of an outcome before its commit.
                with anyio.CancelScope(shield=True):
                    await self.recorder.commit_outcome(state)
        assert state is not None
        kept = state.steps.get(mine.key)  # another runtime's outcome, recorded first, wins
        if kept is None or kept.data == mine.data:
            return result
        return self.recorder.decode(state, mine.key, kept)

    async def _body(
        self,
        state: JournaledState,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Any, Record]:
        """Run the body; returns its result, and its outcome record (``w:result``), which is
        not committed yet: it commits with the session's end (see ``ClaimHolder.finish``). A
        body that raises leaves its ``w:failure:N`` record in the same place."""
        body = anyio.CancelScope()
        watching = anyio.CancelScope()

        async def watch() -> None:
            with watching:
                await self._watch_cancel(state, body)

        state.spawn(watch)
        token = running_runtime.set(self.runtime)
        try:
            with body:
                result = await fn(*args, **kwargs)
        except Exception as exc:
            self._record_failure(state, exc)
            raise
        finally:
            running_runtime.reset(token)
            watching.cancel()
        if state.end_status == "cancelled":  # the body was stopped by cancel()
            raise SessionCancelledError(
                f"session {state.id!r} was cancelled (with cancel()) while it ran; the step "
                "that was running recorded nothing.",
                session_id=state.id,
            )
        key = workflow_result_key()
        data = self.recorder.encode(state, key, result, what="workflow result")
        record = Record(state.id, STEP, key, data, time.time())
        state.outcome.append(record)
        return result, record

    def _record_failure(self, state: JournaledState, exc: Exception) -> None:
        """Journal why this run failed, for ``result()`` (best effort: an exception that cannot
        be encoded is recorded by its type and message only), with the session's end."""
        keys = [*state.steps, *(r.key for r in state.outcome)]
        key = workflow_failure_key(sum(1 for k in keys if failure_index(k) is not None))
        data = self.recorder.encode(state, key, JournaledFailure.of(exc), what="workflow failure")
        state.outcome.append(Record(state.id, STEP, key, data, time.time()))

    async def _watch_cancel(self, state: JournaledState, body: anyio.CancelScope) -> None:
        """Stop the body when ``cancel()`` is asked for the session, from any process: woken by
        the store's notice (Postgres, in-process stores) or by a poll of its sessions row."""
        while True:
            event = self.inbox.wakeups.setdefault(state.id, anyio.Event())
            pushed = await self.inbox.watch()
            info = await self.backend.session_info(state.id)
            if info is None or info.cancel_requested:
                state.end_status = "cancelled"
                body.cancel()
                return
            wait = 5.0 if pushed else max(self.poll_interval, 0.5)
            with anyio.move_on_after(wait):
                await event.wait()

    # -- reading ---------------------------------------------------------------------------------
    async def info(self, session_id: str) -> SessionInfo:
        info = await self.backend.session_info(session_id)
        if info is None:
            raise LookupError(f"no session {session_id!r} in the store")
        return info

    async def result(self, session_id: str, timeout: float | None) -> Any:
        """Wait until the session ends, then return its result or raise its failure."""
        with anyio.fail_after(timeout) if timeout is not None else nullcontext():
            while True:
                event = self.inbox.wakeups.setdefault(session_id, anyio.Event())
                pushed = await self.inbox.watch()
                info = await self.info(session_id)
                if info.status in ENDED_STATUSES:
                    return await self._outcome(info)
                with anyio.move_on_after(1.0 if pushed else self.poll_interval):
                    await event.wait()

    async def _outcome(self, info: SessionInfo) -> Any:
        sid = info.session_id
        if info.status == "cancelled":
            raise SessionCancelledError(
                f"session {sid!r} was cancelled: it has no result.", session_id=sid
            )
        journal = await self.backend.load_session(sid)
        rows = journal.steps
        if info.status == "completed":
            row = rows.get(workflow_result_key())
            if row is None and not journal.complete:
                row = await self.backend.load_row(sid, STEP, workflow_result_key())
            if row is not None:
                return decode_value(
                    self.backend.codec, row.data, session_id=sid, step=workflow_result_key()
                )
            if info.workflow is None:
                return None  # a plain session has no result
        failures = {n: k for k in rows if (n := failure_index(k)) is not None}
        if failures:
            key = failures[max(failures)]
            failure = decode_value(self.backend.codec, rows[key].data, session_id=sid, step=key)
            if isinstance(failure, JournaledFailure):
                raise failure.rebuild(sid, "workflow")
        raise StepFailedError(
            f"session {sid!r} ended {info.status!r} without a recorded outcome.",
            session_id=sid,
            step=None,
            type_name="unknown",
            original_message="",
        )

    # -- cancelling ------------------------------------------------------------------------------
    async def cancel(self, session_id: str) -> None:
        """Cancel the session (final): see ``JournaledRuntime.cancel``."""
        self.backend.check_open(session_id)
        if await self.backend.request_cancel(session_id) is None:
            raise LookupError(f"no session {session_id!r} in the store")
        self.inbox.wake(session_id)  # a body running here stops at once

    # -- forking ---------------------------------------------------------------------------------
    async def fork(self, session_id: str, new_session_id: str, at: str | None) -> SessionInfo:
        """Copy the journal of ``session_id`` recorded before the first step named ``at`` (all of
        it: ``None``) into a new pending session of the same workflow."""
        source = await self.info(session_id)
        if source.workflow is None:
            raise JournalMismatchError(
                f"session {session_id!r} is a plain session: only a workflow session can be "
                "forked (one made by run or start).",
                session_id=session_id,
            )
        if await self.backend.session_info(new_session_id) is not None:
            raise JournalMismatchError(
                f"cannot fork {session_id!r} into {new_session_id!r}: that session exists.",
                session_id=new_session_id,
            )
        journal = await self.backend.load_session(session_id)
        if not journal.complete:
            raise TypeError("fork() needs a store that loads a whole session")
        rows = sorted(
            [(STEP, k, r) for k, r in journal.steps.items()]
            + [(STREAM, k, r) for k, r in journal.streams.items()],
            key=lambda item: item[2].created_at,
        )
        if at is not None:
            cut = next((i for i, (_, k, _r) in enumerate(rows) if step_name_of(k) == at), None)
            if cut is None:
                raise ValueError(
                    f"session {session_id!r} has no step named {at!r} to fork at (steps are "
                    "found by the name given to step() or stream_step())."
                )
            rows = rows[:cut]
        args_row = journal.steps.get(workflow_args_key())
        if args_row is None:
            raise JournalMismatchError(
                f"session {session_id!r} has no recorded arguments.", session_id=session_id
            )
        now = time.time()
        recode = self._recode
        copied = [
            Record(new_session_id, kind, key, recode(session_id, new_session_id, kind, key, r), now)
            for kind, key, r in rows
            if not is_workflow_key(key)  # the arguments are written below; outcomes never
        ]
        if copied:
            await self.backend.append(copied)  # rows first: the session is made pending last
        args = self._recode(session_id, new_session_id, STEP, workflow_args_key(), args_row)
        record = Record(new_session_id, STEP, workflow_args_key(), args, now)
        info, _ = await self.backend.create_session(new_session_id, source.workflow, record)
        return info

    def _recode(self, source: str, target: str, kind: int, key: str, row: Row) -> bytes:
        """A row of ``source`` as a row of ``target`` (signed rows name their session)."""
        codec = self.backend.codec
        if not codec.signed:
            return row.data
        if is_signal_receipt(key):
            name = receipt_signal_name(key)
            payload = open_signal(codec, row.data, source, name, key)[0]
            return seal_signal(codec, target, name, payload)
        value = decode_value(codec, row.data, session_id=source, step=key, kind=kind)
        return encode_value(codec, value, session_id=target, step=key, kind=kind)

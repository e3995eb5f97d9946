"""The journaled runtime: every step, stream step and received signal is recorded in a store and
replayed from it when the session runs again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from .._core import observe as _observe
from .._core.base import BaseRuntime
from .._core.keys import (
    describe_key,
    fingerprint,
    idempotency_journal_key,
    legacy_journal_key,
    step_journal_key,
    timer_journal_key,
)
from .._core.names import check_name
from .._core.streams import StreamStep, call_step_fn, open_producer
from .._core.values import JournalCodec, decode_value, encode_value
from .._errors import SessionBusyError, StoreError
from .._journal.backend import (
    SESSION_STATUSES,
    STEP,
    STREAM,
    JournalBackend,
    JournalEntry,
    JournalStore,
    PruneResult,
    Record,
    Row,
    SessionInfo,
)
from .._journal.memory import InMemoryJournalStore
from .._journal.owner import new_owner_id, owner_is_dead
from .._policy import (
    JournaledFailure,
    StepPolicy,
    StepTimeoutError,
    policy_of,
    run_with_policy,
)
from .claims import ClaimHolder, session_status
from .signals import SignalsMixin
from .state import JournaledSession, JournaledState

__all__ = ["JournaledRuntime", "JournaledSession"]


class JournaledRuntime(SignalsMixin, BaseRuntime[JournaledState]):
    """Journals every step of a session in ``store`` and replays recorded steps on the next run.

    :param store: any :class:`JournalStore`; the default is a new :class:`InMemoryJournalStore`.
        A store passed in stays the caller's: ``aclose()`` closes only a store the runtime made.
    :param durability: ``"commit"`` (default): ``step`` returns only after its record is
        committed, so a crash never loses a step whose result the caller has seen.
        ``"buffered"`` (opt-in, bundled stores only): ``step`` returns at once and records are
        committed in batches -- when ``flush_interval`` seconds have passed, when 256 are
        waiting, before a signal wait blocks, and when the session context exits. A crash loses
        at most the records not yet committed, and the journal always stays a consistent prefix
        (records commit in order; a later record never survives without the earlier ones).
    :param flush_interval: the longest a buffered record waits, in seconds.
    :param lease: seconds a claim on a session lasts without renewal (bundled stores). The
        session renews it every ``lease / 3`` while open; a crashed owner's sessions can be taken
        over ``lease`` seconds after its last renewal -- at once on the same host and in the same
        pid namespace (Linux), where a dead owner process is detected.
    :param policy: the default :class:`StepPolicy` of every step (retries, timeouts, journaled
        failures); a policy attached to a step function with ``with_policy`` overrides it.
    :param strict: strict replay: a step name found in the journal with other arguments raises
        :class:`JournalMismatchError` instead of running as a new step.
    :param poll_interval: how often a signal wait checks the store when nothing wakes it (SQLite
        and memory; Postgres is woken by LISTEN/NOTIFY and polls only as a fallback).

    Step identity: a step is found in the journal by its name plus a fingerprint of its arguments,
    or by ``idempotency_key`` alone. A loop that calls the same step with the same arguments
    several times must put the iteration in the name (``f"poll_{i}"``), or every iteration after
    the first returns the first one's recorded result.
    """

    name = "journaled"

    def __init__(
        self,
        store: JournalStore | None = None,
        *,
        durability: Literal["commit", "buffered"] = "commit",
        flush_interval: float = 0.05,
        lease: float = 15.0,
        poll_interval: float = 0.1,
        policy: StepPolicy | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.policy = policy if policy is not None else StepPolicy()
        self.strict = strict
        self.lease = lease
        self.poll_interval = poll_interval
        self.owner_id = new_owner_id()
        self._wakeups: dict[str, anyio.Event] = {}
        self._pushed: bool | None = None  # does the store push signal notices? (None: not asked)
        if durability not in ("commit", "buffered"):
            raise ValueError(f"durability must be 'commit' or 'buffered', not {durability!r}")
        self.durability = durability
        self.flush_interval = flush_interval
        self._owns_store = store is None
        self.store: JournalStore = store if store is not None else InMemoryJournalStore()
        self._native: JournalBackend | None = (
            self.store if isinstance(self.store, JournalBackend) else None
        )
        self._codec: JournalCodec = self._native.codec if self._native else JournalCodec()
        self._claims = (
            None
            if self._native is None
            else ClaimHolder(self._native, self.owner_id, lease, poll_interval)
        )
        if durability == "buffered" and self._native is None:
            raise ValueError(
                "durability='buffered' needs a bundled store (InMemoryJournalStore, "
                "SqliteJournalStore, PostgresJournalStore); a third-party store commits per call"
            )
        self._buffered = durability == "buffered"

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state} store={self.store!r} sessions={len(self._states)}>"

    # -- session state ---------------------------------------------------------------------------
    def _new_state(self, session_id: str) -> JournaledState:
        return JournaledState(session_id, self)

    def _session_object(self, state: JournaledState) -> JournaledSession:
        return state.session

    async def _load_state(self, state: JournaledState, wait: float | None) -> None:
        native = self._native
        if native is None:
            return
        native.check_open(state.id)
        assert self._claims is not None
        state.claimed_at = await self._claims.take(state.id, wait)
        state.claimed = True
        try:
            journal = await native.load_session(state.id)
            state.steps.update(journal.steps)
            state.streams.update(journal.streams)
            state.legacy = any(k.startswith("l:") for k in journal.steps) or any(
                k.startswith("l:") for k in journal.streams
            )
            if self.strict:
                state.note_recorded((*journal.steps, *journal.streams))
            # Signals sent while the session was not running: move them into its journal now,
            # so poll_signal sees them too (the session's waits receive them, in order).
            for name in await native.pending_names(state.id):
                while await self._fetch(state, name):
                    pass
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await native.release(state.id, self.owner_id, "failed", 0)
            raise

    async def _finish_state(self, state: JournaledState, exc: BaseException | None) -> None:
        if self._claims is None or not state.claimed:
            return
        status = session_status(exc)
        if status == "completed" and state.write_error is not None:
            status = "failed"
        await self._claims.release(state.id, status, len(state.steps) + len(state.streams))

    async def _interrupt(self, state: JournaledState) -> None:
        """The runtime closes with ``state`` open: flush it and release its claim."""
        if self._claims is None or not state.claimed or self._claims.native.closed:
            return
        try:
            await self._flush(state)
        except StoreError as error:
            _observe.release_failed(state.id, error)
        state.claimed = False  # released here; the session's own exit has nothing to end
        await self._claims.release(state.id, "interrupted", len(state.steps) + len(state.streams))

    async def _heartbeat(self, state: JournaledState, claims: ClaimHolder) -> None:
        try:
            await claims.renew(
                state.id, state.claimed_at, lambda: state.claimed and not self._closed
            )
        except Exception as exc:
            state.claim_error = exc
            _observe.claim_renewal_failed(state.id, exc)
            raise

    def _require_open(self, state: JournaledState, step: str) -> None:
        self._check_open(state.id, step)
        if self._native is not None:
            self._native.check_open(state.id, step)
        if state.claim_error is not None:
            raise SessionBusyError(
                f"session {state.id!r}, step {step!r}: this runtime no longer holds the "
                f"session's claim ({state.claim_error}); nothing more is recorded here. Open the "
                "session again to resume it.",
                session_id=state.id,
                step=step,
            ) from state.claim_error
        if state.write_error is not None:
            raise state.write_failed(step)

    def _context_entered(self, state: JournaledState, tg: TaskGroup) -> None:
        # Services of the shared state: they outlive this context if others are still open.
        if state.claimed and self._claims is not None:
            state.keep_running("heartbeat", partial(self._heartbeat, state, self._claims))
        if self._buffered:
            state.keep_running("flusher", partial(self._flush_periodically, state))

    async def _flush_periodically(self, state: JournaledState) -> None:
        # A failed flush raises here, in the session's task group: the session stops with the
        # error at once (and every later write of the session is refused, see _flush).
        while True:
            await anyio.sleep(self.flush_interval)
            if state.buffer:
                with anyio.CancelScope(shield=True):
                    await self._flush(state)

    async def _context_exiting(self, state: JournaledState) -> None:
        await self._flush(state)
        if state.write_error is not None:
            raise state.write_failed(None)

    async def _flush(self, state: JournaledState) -> None:
        """Commit the session's buffered records (in order, in one transaction)."""
        records, state.buffer = state.buffer, []
        if not records or self._native is None:
            return
        if state.write_error is not None:
            # An earlier batch was lost: committing later records would leave a gap in the
            # journal (a later step without an earlier one). Refuse them all.
            raise state.write_failed(describe_key(records[0].key))
        try:
            owners = {state.id: self.owner_id} if state.claimed else None
            conflicts = await self._native.append(records, owners)
        except Exception as exc:
            _observe.commit_failed(state.id, len(records), exc, self._buffered)
            if not self._buffered:
                state.buffer[:0] = records  # nobody saw them as committed: keep for the next try
                raise
            state.write_error = exc
            if isinstance(exc, SessionBusyError):
                raise  # the claim was lost: say so, not "a commit failed"
            raise StoreError(
                f"session {state.id!r}: {len(records)} buffered journal records could not be "
                f"committed ({exc}). The journal keeps what was committed before them; open the "
                "session again to resume from there.",
                session_id=state.id,
                step=describe_key(records[0].key),
            ) from exc
        state.adopt(conflicts)

    # -- journal access --------------------------------------------------------------------------
    def _decode(self, state: JournaledState, key: str, row: Row | JournalEntry) -> Any:
        if isinstance(row, JournalEntry):
            return row.value
        return decode_value(self._codec, row.data, session_id=state.id, step=key)

    async def _lookup_step(self, state: JournaledState, key: str) -> Row | JournalEntry | None:
        row = state.steps.get(key)
        if row is None and self._native is None:
            row = await self.store.get_step(state.id, key)
            if row is not None:
                state.steps[key] = row
        return row

    async def _record(
        self, state: JournaledState, kind: int, key: str, value: Any, data: bytes
    ) -> Any:
        """Commit one record and return the value every reader will see for ``key``.

        The write is shielded: once ``fn`` has returned, its result is the step's outcome, and a
        cancellation arriving during the commit must not leave us unsure whether it landed.
        """
        table: dict[str, Any] = state.steps if kind == STEP else state.streams
        native = self._native
        if native is None:
            return await self._record_foreign(state, kind, key, value)
        record = Record(state.id, kind, key, data, time.time())
        if self._buffered:
            table[key] = Row(data, record.created_at)  # buffered: visible to this run at once
            state.buffer.append(record)
            if len(state.buffer) >= 256:
                await self._flush(state)
            return value
        # Commit mode: the record (and any receipt poll_signal buffered) commits now, shielded.
        # Nobody sees it before the commit succeeded: a concurrent caller of the same key waits
        # on `inflight`, and must never return a value the journal may not keep.
        state.buffer.append(record)
        try:
            await self._flush(state)
        except BaseException:
            state.buffer = [r for r in state.buffer if r is not record]
            raise
        # A conflict adopted by the flush (another runtime recorded the key first) wins.
        row = table.setdefault(key, Row(data, record.created_at))
        if isinstance(row, Row) and row.data != data:
            return decode_value(self._codec, row.data, session_id=state.id, step=key, kind=kind)
        return value

    async def _record_foreign(self, state: JournaledState, kind: int, key: str, value: Any) -> Any:
        # A third-party store: write, then read back what the store kept (first writer wins
        # there too), so this caller sees the same value as every other reader.
        with anyio.CancelScope(shield=True):
            if kind == STEP:
                await self.store.put_step(state.id, key, value)
                entry = await self.store.get_step(state.id, key)
            else:
                await self.store.put_stream(state.id, key, value)
                chunks = await self.store.get_stream(state.id, key)
        if kind == STEP:
            kept = entry if entry is not None else JournalEntry(value, time.time())
            state.steps[key] = kept
            return kept.value
        state.streams[key] = value if chunks is None else chunks
        return state.streams[key]

    # -- steps -----------------------------------------------------------------------------------
    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once per session and journal its result.

        Inside a session: if the journal holds a result for this step's key, return it without
        calling ``fn``; otherwise await ``fn`` (sync functions are called in the event loop
        thread), commit the result, and return it. ``idempotency_key`` is the only keyword this
        method keeps for itself; every other keyword goes to ``fn``.

        An exception from ``fn`` propagates unchanged and records nothing; so does cancellation.
        Two concurrent calls with one key run ``fn`` once and both get its result.
        Outside a session, ``fn`` just runs.
        """
        state = self._current.get()
        sid = None if state is None else state.id
        check_name("step name", name, sid)
        if idempotency_key is not None:
            idempotency_key = str(idempotency_key)
            check_name("idempotency key", idempotency_key, sid)
        policy = self._policy_for(fn)
        if state is None:
            self._check_open(None, name)
            return await self._attempts(fn, args, kwargs, policy, None, name)
        self._require_open(state, name)
        fp = ""
        if idempotency_key is not None:
            key = idempotency_journal_key(idempotency_key)
        else:
            fp = fingerprint(args, kwargs, session_id=state.id, step=name)
            key = step_journal_key(name, fp)
            if self.strict:
                state.called(name, fp)
        while True:
            row = await self._lookup_step(state, key)
            if row is None and state.legacy:
                # A journal imported from jeevesagent 0.9.7 keyed steps by name alone.
                legacy = legacy_journal_key(name)
                row = state.steps.get(legacy)
                if row is not None:
                    key = legacy
            if row is not None:
                value = self._decode(state, key, row)
                state.replayed += 1
                if state.tracer is not None or _observe.log.isEnabledFor(_observe.DEBUG):
                    _observe.step_replayed(self, state, name, value)
                if isinstance(value, JournaledFailure):
                    raise value.rebuild(state.id, name)
                return value
            running = state.inflight.get(key)
            if running is None:
                break
            # Same key already running in this session: wait for it, then take its result (or,
            # if it failed, run it ourselves).
            await running.wait()
        if self.strict and fp:
            state.check_strict(name, fp)
        run = _observe.StepRun(self, state, name)  # its span is current until run.end()
        done = state.inflight[key] = anyio.Event()
        try:
            try:
                result = await self._attempts(fn, args, kwargs, policy, state.id, name)
            except Exception as exc:
                # A timed-out step records nothing, as documented: the timeout says how long
                # this attempt was allowed, not what the step's outcome is.
                if not policy.journal_failures or isinstance(exc, StepTimeoutError):
                    raise
                # Failed for good: journal the failure so a replay raises it without running.
                failure = JournaledFailure.of(exc)
                data = b""
                if self._native is not None:
                    data = encode_value(self._codec, failure, session_id=state.id, step=key)
                await self._record(state, STEP, key, failure, data)
                raise
            data = b""
            if self._native is not None:
                data = encode_value(self._codec, result, session_id=state.id, step=key)
            return await self._record(state, STEP, key, result, data)
        except BaseException as exc:
            run.fail(exc)
            raise
        finally:
            del state.inflight[key]
            done.set()
            run.end()

    def _policy_for(self, fn: Callable[..., Any]) -> StepPolicy:
        attached = policy_of(fn)
        return attached.merged_over(self.policy) if attached is not None else self.policy

    @staticmethod
    async def _attempts(
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
        """A durable sleep: the wake-up time is journaled under ``name``, so after a restart the
        session sleeps only what remains (or not at all if the time has passed). Outside a
        session it is a plain ``anyio.sleep``."""
        state = self._current.get()
        check_name("sleep name", name, None if state is None else state.id)
        if state is None:
            self._check_open(None, name)
            await anyio.sleep(seconds)
            return
        self._require_open(state, name)
        key = timer_journal_key(name)
        row = await self._lookup_step(state, key)
        if row is None:
            wake_at = time.time() + seconds
            data = b""
            if self._native is not None:
                data = encode_value(self._codec, wake_at, session_id=state.id, step=key)
            wake_at = await self._record(state, STEP, key, wake_at, data)
        else:
            wake_at = self._decode(state, key, row)
        await anyio.sleep(max(0.0, wake_at - time.time()))

    def stream_step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> StreamStep:
        """Yield the chunks of ``fn(*args, **kwargs)`` (an async iterable) and journal them.

        The chunk list is recorded, in one write, only when the producer is exhausted; a consumer
        that stops early, a producer that raises, or a cancellation records nothing. A recorded
        stream replays its chunks in order without calling ``fn``. Close the iterator with
        ``contextlib.aclosing`` when you may stop early: that closes the producer at once.
        """
        state = self._current.get()
        check_name("stream step name", name, None if state is None else state.id)
        policy = self._policy_for(fn)

        async def reopen() -> AsyncIterator[Any]:
            return await open_producer(fn, args, kwargs)

        if state is None:
            self._check_open(None, name)

            async def run_unjournaled() -> tuple[None, AsyncIterator[Any]]:
                return None, await open_producer(fn, args, kwargs)

            return StreamStep(run_unjournaled, None, policy, reopen, (None, name))
        self._require_open(state, name)
        fp = fingerprint(args, kwargs, session_id=state.id, step=name)
        key = step_journal_key(name, fp)
        if self.strict:
            state.called(name, fp)
            if key not in state.streams:
                state.check_strict(name, fp)

        async def start() -> tuple[list[Any] | None, AsyncIterator[Any] | None]:
            self._require_open(state, name)
            recorded = await self._lookup_stream(state, key)
            if recorded is None and state.legacy and legacy_journal_key(name) in state.streams:
                recorded = await self._lookup_stream(state, legacy_journal_key(name))
            if recorded is not None:
                return recorded, None
            return None, await open_producer(fn, args, kwargs)

        async def complete(chunks: list[Any]) -> None:
            data = b""
            if self._native is not None:
                data = encode_value(
                    self._codec,
                    chunks,
                    session_id=state.id,
                    step=key,
                    what="stream chunks",
                    kind=STREAM,
                )
            await self._record(state, STREAM, key, chunks, data)

        return _observe.stream_step(
            self, state, name, start, complete, policy, reopen, (state.id, name)
        )

    async def _lookup_stream(self, state: JournaledState, key: str) -> list[Any] | None:
        row = state.streams.get(key)
        if row is None:
            if self._native is not None:
                return None
            chunks = await self.store.get_stream(state.id, key)
            if chunks is None:
                return None
            state.streams[key] = row = chunks
        if isinstance(row, Row):
            decoded: list[Any] = decode_value(
                self._codec, row.data, session_id=state.id, step=key, kind=STREAM
            )
            return decoded
        return list(row)

    async def list_sessions(self, status: str | None = None) -> list[SessionInfo]:
        """Sessions known to the store, with status, owner, lease and step count (bundled
        stores). ``status``: ``"running"``, ``"completed"``, ``"failed"``, ``"interrupted"``
        (stopped by the application: to be resumed), ``"imported"`` (sessions copied from a
        jeevesagent 0.9.7 journal, not run since), or ``"cancelled"`` (sessions that ended so
        before this release)."""
        native = self._require_native("list_sessions")
        if status is not None and status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {SESSION_STATUSES}, not {status!r}")
        return await native.list_sessions(status)

    async def orphaned_sessions(self) -> list[SessionInfo]:
        """Sessions to resume: those left ``running`` by an owner that is gone (its lease
        expired by the store's clock, or its process on this host, in this pid namespace, no
        longer exists), and those ``interrupted`` by
        the application's own shutdown. Resume them by running them again (see the README);
        another worker may resume one first, so opening one can raise
        :class:`SessionBusyError` -- skip it then. Oldest first."""
        native = self._require_native("orphaned_sessions")
        # Leases are measured on the store's clock, never this worker's (it may run ahead). Read
        # before the list: a lease renewed in between only lies further past `now`.
        now = await native.now()
        running = [
            info
            for info in await native.list_sessions("running")
            if info.owner is None
            or (info.lease_expires is not None and info.lease_expires < now)
            or owner_is_dead(info.owner)
        ]
        interrupted = await native.list_sessions("interrupted")
        return sorted(running + interrupted, key=lambda i: (i.created_at, i.session_id))

    async def prune(
        self,
        *,
        older_than: float | None = None,
        sessions: Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> PruneResult:
        """Delete finished sessions from the store (bundled stores): see
        :meth:`SqliteJournalStore.prune <jeevesagent.runtime._store.JournalBackend.prune>`.

        A session open anywhere -- in this runtime too -- is never deleted: it is reported in
        ``skipped``. A pruned session that runs again starts afresh: every step runs again.
        """
        native = self._require_native("prune")
        return await native.prune(
            older_than=older_than, sessions=sessions, status=status, dry_run=dry_run
        )

    def _require_native(self, what: str) -> JournalBackend:
        self._check_open()
        if self._native is None:
            raise TypeError(f"{what}() needs a bundled store (it reads the sessions table)")
        return self._native

    # -- closing ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the runtime, and the store if the runtime created it. Idempotent."""
        if self._closed:
            return
        await super().aclose()
        # Sessions still open here stop at their next call (StoreClosedError). Commit what they
        # buffered and end their claims now, so another runtime -- in this same live process
        # too -- can resume them at once instead of waiting for a lease to expire.
        with anyio.CancelScope(shield=True):
            for state in list(self._states.values()):
                await self._interrupt(state)
        for event in self._wakeups.values():
            event.set()  # waiters wake, see the runtime closed, and raise StoreClosedError
        self._wakeups.clear()
        if self._owns_store:
            await self.store.aclose()

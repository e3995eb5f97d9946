"""The journaled runtime: every step, stream step and received signal is recorded in a store and
replayed from it when the session runs again.

:class:`JournaledRuntime` is the public facade. It holds the steps and the admin commands, and
composes the parts that do the work: a :class:`~.claims.ClaimHolder` (taking, renewing and
releasing session claims), a :class:`~.recorder.Recorder` (reading and writing journal rows) and
a :class:`~.signals.SignalInbox` (sending and receiving signals). Every store is reached through
the :class:`JournalBackend` contract: a five-method ``JournalStore`` through its adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal, ParamSpec, TypeVar, overload

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._core import observe as _observe
from .._core.base import BaseRuntime
from .._core.keys import (
    is_legacy_key,
)
from .._core.names import check_name, check_session_id, check_signal_target
from .._core.registry import registered_workflow, workflow_name
from .._core.streams import StreamStep
from .._errors import SessionBusyError, SessionCancelledError, StoreError
from .._journal.adapter import StoreAdapter
from .._journal.backend import (
    SESSION_STATUSES,
    JournalBackend,
    JournalStore,
    PruneResult,
    SessionInfo,
)
from .._journal.memory import InMemoryJournalStore
from .._journal.owner import new_owner_id
from .._policy import StepPolicy
from .claims import ClaimHolder, orphaned, session_status, suspension_of
from .recorder import Recorder
from .signals import SignalInbox
from .state import JournaledSession, JournaledState
from .steps import Steps
from .streamread import StreamReader, StreamWatch
from .worker import Worker
from .workflows import Engine, WorkflowHandle

__all__ = ["JournaledRuntime", "JournaledSession"]

P = ParamSpec("P")
T = TypeVar("T")


class JournaledRuntime(BaseRuntime[JournaledState]):
    """Journals every step of a session in ``store`` and replays recorded steps on the next run.

    :param store: any :class:`JournalStore`; the default is a new :class:`InMemoryJournalStore`.
        A store passed in stays the caller's: ``aclose()`` closes only a store the runtime made.
        A store with only the five published methods works through an adapter that keeps the
        sessions table and the mailbox in this process (see ``_journal/adapter.py``).
    :param durability: ``"commit"`` (default): ``step`` returns only after its record is
        committed, so a crash never loses a step whose result the caller has seen.
        ``"buffered"`` (opt-in): ``step`` returns at once and records are
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
        and memory; Postgres is woken by LISTEN/NOTIFY and polls only as a fallback); also how
        often ``read_stream`` looks for new chunks on such stores.
    :param stream_flush_interval: a running stream step journals the chunks it delivered in
        batches, so that ``read_stream`` can follow it from another process and a resumed
        session gets them back after a crash: a batch is written with the first chunk that
        comes at least this many seconds after the last batch, or when ``stream_flush_chunks``
        chunks are waiting -- never one write per chunk. ``None`` turns this off (a stream
        step is journaled only when it completes, as before 0.11).
    :param stream_flush_chunks: the most chunks a stream step keeps unjournaled.

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
        stream_flush_interval: float | None = 0.1,
        stream_flush_chunks: int = 256,
    ) -> None:
        super().__init__()
        self.policy = policy if policy is not None else StepPolicy()
        self.strict = strict
        self.lease = lease
        self.poll_interval = poll_interval
        self.owner_id = new_owner_id()
        if durability not in ("commit", "buffered"):
            raise ValueError(f"durability must be 'commit' or 'buffered', not {durability!r}")
        self.durability = durability
        self.flush_interval = flush_interval
        if stream_flush_interval is not None and not stream_flush_interval >= 0:
            raise ValueError(
                f"stream_flush_interval must be seconds >= 0 or None, not {stream_flush_interval!r}"
            )
        if stream_flush_chunks < 1:
            raise ValueError(f"stream_flush_chunks must be >= 1, not {stream_flush_chunks!r}")
        self.stream_flush_interval = stream_flush_interval
        self.stream_flush_chunks = stream_flush_chunks
        self._owns_store = store is None
        self.store: JournalStore = store if store is not None else InMemoryJournalStore()
        backend = self.store if isinstance(self.store, JournalBackend) else None
        self._backend: JournalBackend = backend or StoreAdapter(self.store)
        self._claims = ClaimHolder(self._backend, self.owner_id, lease, poll_interval)
        self._recorder = Recorder(
            self._backend,
            self.owner_id,
            buffered=durability == "buffered",
            flush_interval=flush_interval,
        )
        self._signals = SignalInbox(
            self._backend,
            self._recorder,
            self._states,
            self._check_open,
            self.owner_id,
            poll_interval,
        )
        self._steps = Steps(
            self, self._recorder, self._current, self._check_open, self._require_open
        )
        self._stream_watch = StreamWatch(self._backend)
        self._engine = Engine(
            self,
            self._backend,
            self._recorder,
            self._signals,
            self._states,
            self.session,
            self.owner_id,
            poll_interval,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state} store={self.store!r} sessions={len(self._states)}>"

    # -- session state ---------------------------------------------------------------------------
    def _new_state(self, session_id: str) -> JournaledState:
        return JournaledState(session_id, self)

    def _session_object(self, state: JournaledState) -> JournaledSession:
        return state.session

    async def _load_state(self, state: JournaledState, wait: float | None) -> None:
        backend = self._backend
        backend.check_open(state.id)
        # One round trip (the store's open_session): the claim, the journal and the names of
        # the signals waiting in the mailbox.
        try:
            state.claimed_at, opened = await self._claims.take(state.id, wait)
        except SessionBusyError:
            raise
        except BaseException as exc:
            # The store may have granted the claim before failing (a store whose open_session
            # is composed of separate calls): end it -- "interrupted" if the application
            # stopped us, so that it is resumed. Fenced: a claim not ours is left alone.
            status = session_status(exc)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await backend.release_lazy(state.id, self.owner_id, status, 0)
            raise
        info, journal = opened.info, opened.journal
        state.claimed = True
        state.workflow = info.workflow
        if info.cancel_requested:  # cancel() is final: the session never runs again
            with anyio.CancelScope(shield=True):
                # Lazily: lost, the next claim sees the (durable) cancel request again.
                await backend.release_lazy(state.id, self.owner_id, "cancelled", info.steps)
            raise SessionCancelledError(
                f"session {state.id!r} was cancelled (with cancel()): it does not run again. "
                "Start a new session, or fork this one (fork()) to run it from a step.",
                session_id=state.id,
            )
        try:
            assert journal is not None, "a granted claim comes with the journal"
            state.steps.update(journal.steps)
            state.streams.update(journal.streams)
            state.loaded = journal.complete
            state.legacy = any(map(is_legacy_key, journal.steps)) or any(
                map(is_legacy_key, journal.streams)
            )
            if self.strict:
                state.note_recorded((*journal.steps, *journal.streams))
            # Signals sent while the session was not running: move them into its journal now,
            # so poll_signal sees them too (the session's waits receive them, in order).
            if opened.pending:
                await self._signals.fetch_pending(state, opened.pending)
        except BaseException as exc:
            status = session_status(exc)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await backend.release_lazy(state.id, self.owner_id, status, 0)
            raise

    async def _finish_state(self, state: JournaledState, exc: BaseException | None) -> None:
        if not state.claimed:
            return
        rows = len(state.steps) + len(state.streams)
        suspended = suspension_of(exc) if state.end_status is None else None
        if suspended is not None and state.write_error is None:
            await self._claims.suspend(state.id, suspended.waiting_for, suspended.wake_at, rows)
            return
        status = state.end_status or session_status(exc)
        if status == "completed" and state.write_error is not None:
            status = "failed"
        outcome, state.outcome = state.outcome, []
        if outcome and state.write_error is None:  # with its status: one durable commit
            return await self._claims.finish(state, outcome, status)
        await self._claims.release(state.id, status, rows, state.workflow)

    async def _interrupt(self, state: JournaledState) -> None:
        """The runtime closes with ``state`` open: flush it and release its claim."""
        if not state.claimed or self._backend.closed:
            return
        try:
            await self._recorder.flush(state)
        except StoreError as error:
            _observe.release_failed(state.id, error)
        state.claimed = False  # released here; the session's own exit has nothing to end
        rows = len(state.steps) + len(state.streams)
        await self._claims.release(state.id, "interrupted", rows, state.workflow)

    async def _heartbeat(self, state: JournaledState, claims: ClaimHolder) -> None:
        # It sleeps through the session's alarm: what a stream step asks of it runs meanwhile.
        held, alarm = (lambda: state.claimed and not self._closed), state.alarm
        try:
            with alarm.serving():
                await claims.renew(state.id, state.claimed_at, held, alarm.sleep)
        except Exception as exc:
            state.claim_error = exc
            _observe.claim_renewal_failed(state.id, exc)
            raise

    def _require_open(self, state: JournaledState, step: str) -> None:
        self._check_open(state.id, step)
        self._backend.check_open(state.id, step)
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
        if state.claimed:
            state.alarm.kept = True
            state.keep_running("heartbeat", partial(self._heartbeat, state, self._claims))
        if self._recorder.buffered:
            state.keep_running("flusher", partial(self._recorder.flush_periodically, state))

    async def _context_exiting(self, state: JournaledState) -> None:
        if not state.ends_here():  # else the session's end commits the buffer with its outcome
            await self._recorder.flush(state)
        if state.write_error is not None:
            raise state.write_failed(None)

    # -- steps -----------------------------------------------------------------------------------
    # Overloads as in InProcRuntime.step (see the comment there on why these four).
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
        """Run ``fn(*args, **kwargs)`` once per session and journal its result.

        Inside a session: if the journal holds a result for this step's key (``name`` and a
        fingerprint of the arguments, or ``idempotency_key``), return it without calling ``fn``;
        otherwise await ``fn`` (sync functions are called in the event loop thread), commit the
        result, and return it. Every keyword but ``idempotency_key`` goes to ``fn``.

        An exception from ``fn`` propagates unchanged and records nothing; so does cancellation.
        Two concurrent calls with one key run ``fn`` once and both get its result. Outside a
        session, ``fn`` just runs. Raises :class:`ValueEncodingError` (an unencodable argument or
        result), :class:`InvalidNameError`, :class:`JournalMismatchError` (strict replay),
        :class:`JournalCorruptError`, :class:`StoreError`."""
        return await self._steps.step(name, fn, args, kwargs, idempotency_key)

    async def sleep(self, name: str, seconds: float) -> None:
        """A durable sleep: the wake-up time is journaled under ``name``, so after a restart the
        session sleeps only what remains (or not at all if the time has passed). Outside a
        session it is a plain ``anyio.sleep``."""
        await self._steps.sleep(name, seconds)

    # -- signals ---------------------------------------------------------------------------------
    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        """Send a signal to a session (FIFO per name; each signal is received once).

        The payload is encoded now, so a payload that cannot be journaled fails here, at the
        sender. The signal is committed to the session's mailbox before this returns -- whether
        the session is open here, in another process or host, or not at all -- and it is
        delivered when the session waits for it. (A five-method store has no mailbox: signals
        then reach only sessions run by this runtime.)
        """
        check_signal_target(session_id, name)
        await self._signals.send(session_id, name, payload)

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the next signal ``name``; ``TimeoutError`` after ``timeout`` seconds.

        In a session open in this runtime the receipt is journaled atomically with taking the
        signal: a replay returns the same payload without waiting, and after a crash a signal
        is either still waiting or journaled as received -- never lost, never received twice.
        A wait that timed out is journaled too: its replay raises ``TimeoutError`` at once, even
        if the signal has arrived since (it is left for the next wait).
        """
        check_signal_target(session_id, name)
        return await self._signals.wait(session_id, name, timeout, self._current.get())

    def poll_signal(self, session_id: str, name: str) -> Any:
        """Take the next signal ``name`` without waiting; ``None`` if none is at hand.

        Synchronous, so it reads no store: in a session open here it returns the next journaled
        receipt -- a replay, or a signal already moved into the journal (one sent through this
        runtime is, at once; one sent from elsewhere, once a ``wait_for_signal`` fetched it).
        Finding nothing is journaled too (with the session's next record), so a replay returns
        ``None`` again even if a signal has arrived since. Each poll adds a journal row: prefer
        ``wait_for_signal`` with a ``timeout`` to polling in a loop. With a five-method store,
        receipts replay only through ``wait_for_signal`` and "nothing" is not journaled.
        """
        check_signal_target(session_id, name)
        return self._signals.poll(session_id, name)

    # One overload per kind of producer, as in InProcRuntime.stream_step.
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
        """Yield the chunks of ``fn(*args, **kwargs)`` (an async iterable) and journal them.

        The chunk list is recorded, in one write, only when the producer is exhausted; a consumer
        that stops early, a producer that raises, or a cancellation records nothing. A recorded
        stream replays its chunks in order without calling ``fn``. Close the iterator with
        ``contextlib.aclosing`` when you may stop early: that closes the producer at once.
        """
        return self._steps.stream_step(name, fn, args, kwargs)

    # -- workflows -------------------------------------------------------------------------------
    def read_stream(self, session_id: str, name: str, *, offset: int = 0) -> StreamReader:
        """The chunks of session ``session_id``'s stream step ``name`` (its latest one of that
        name), from chunk number ``offset`` (from 0), read from the store: from any process,
        while the session runs elsewhere or after it ended. Use it as ``async for chunk in
        rt.read_stream(sid, "reply"):``.

        Live: chunks come as the producer's batches are journaled (see
        ``stream_flush_interval``) -- Postgres wakes the reader with a notice, other stores are
        polled every ``poll_interval`` seconds. The iterator ends when the stream step has
        completed, after its last chunk. A reader that stops (a dropped connection) reconnects
        with the number of chunks it got as ``offset`` and gets exactly the rest (``.offset``
        tells it). A session that ends -- completed, failed, cancelled -- without completing
        the stream step (its producer raised, or its body went on without it) makes the reader
        raise :class:`StreamFailedError` after the chunks that were journaled; a session that
        crashed or was interrupted may resume, and the reader waits for it (bound the wait with
        ``anyio.fail_after`` if you must). No session or step is opened: reading never claims
        the session.
        """
        check_session_id(session_id)
        check_name("stream step name", name, session_id)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        self._check_open(session_id, name)
        return StreamReader(
            self._backend, self._stream_watch, session_id, name, offset, self.poll_interval
        )

    async def run(
        self, wf: Callable[..., Any] | str, session_id: str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """Run workflow ``wf`` (a ``@workflow`` function or its name) inline, as session
        ``session_id``, and return its result.

        The first call records the workflow's name and arguments; the result is recorded when
        the body returns. Again: a completed session returns its recorded result without
        running; a failed or interrupted one resumes (recorded steps replay). Other arguments
        for an existing session raise :class:`JournalMismatchError`; a cancelled session raises
        :class:`SessionCancelledError`. An exception from the body comes out unchanged.
        """
        check_session_id(session_id)
        self._check_open(session_id)
        fn = registered_workflow(wf)
        return await self._engine.run(workflow_name(wf), session_id, fn, args, kwargs)

    async def start(
        self, wf: Callable[..., Any] | str, session_id: str, /, *args: Any, **kwargs: Any
    ) -> WorkflowHandle:
        """Record session ``session_id`` of workflow ``wf`` as ``pending`` for a worker
        (:meth:`serve`, in any process) and return its handle at once. Idempotent for the same
        id and arguments; other arguments raise :class:`JournalMismatchError`. ``wf`` may be a
        name, so a process that does not import the workflow's code can start it."""
        check_session_id(session_id)
        self._check_open(session_id)
        await self._engine.create(workflow_name(wf), session_id, args, kwargs, None)
        return self.handle(session_id)

    def handle(self, session_id: str) -> WorkflowHandle:
        """A handle on session ``session_id``: ``.result()``, ``.status()``, ``.cancel()``."""
        check_session_id(session_id)
        return WorkflowHandle(self._engine, session_id)

    async def result(self, session_id: str, *, timeout: float | None = None) -> Any:
        """Wait, from any process, until the session ends: return its recorded result, raise
        its recorded failure (or :class:`StepFailedError`), or :class:`SessionCancelledError`;
        ``TimeoutError`` after ``timeout`` seconds; ``LookupError`` for an unknown session."""
        check_session_id(session_id)
        self._check_open(session_id)
        return await self._engine.result(session_id, timeout)

    async def cancel(self, session_id: str) -> None:
        """Cancel a session, for good, from any process: a session not running never runs; a
        running one is stopped by its owner wherever it runs (within about a second; at once
        where the store pushes notices), and the step in flight records nothing. Cancelling an
        ended session changes nothing; ``LookupError`` for an unknown session."""
        check_session_id(session_id)
        self._check_open(session_id)
        await self._engine.cancel(session_id)

    async def fork(
        self, session_id: str, new_session_id: str, *, at: str | None = None
    ) -> WorkflowHandle:
        """Make ``new_session_id``, a pending session of the same workflow and arguments whose
        journal is a copy of the source's rows recorded before the first step named ``at``
        (``None``: all of them). Running it replays that prefix and runs the rest."""
        check_session_id(session_id)
        check_session_id(new_session_id)
        self._check_open(session_id)
        await self._engine.fork(session_id, new_session_id, at)
        return self.handle(new_session_id)

    async def serve(
        self,
        *workflows: Callable[..., Any] | str,
        concurrency: int = 8,
        suspend_after: float | None = 60.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run as a worker until cancelled, in your task group (``await tg.start(rt.serve, wf)``
        returns once it has looked for work the first time): run the pending sessions of
        ``workflows``, and resume their interrupted and orphaned ones, continuously, at most
        ``concurrency`` at once. Workers in many processes share one store; a session runs in
        one place at a time. A cancelled ``serve`` leaves its sessions ``interrupted`` for the
        next worker.

        ``suspend_after``: seconds; a session whose body waits that long in
        ``wait_for_signal`` or ``sleep`` (doing nothing else) is suspended -- unwound, its task
        and claim released, recorded ``waiting`` with what it waits for -- and a worker runs it
        again from the top when the signal comes or the time is up (recorded steps replay, the
        wait returns). ``None``: never suspend."""
        self._check_open()
        if suspend_after is not None and not suspend_after >= 0:
            raise ValueError(f"suspend_after must be seconds >= 0 or None, not {suspend_after!r}")
        served = {workflow_name(wf): registered_workflow(wf) for wf in workflows}
        worker = Worker(
            self._engine,
            self._backend,
            self._signals,
            served,
            concurrency,
            self.poll_interval,
            suspend_after,
        )
        await worker.serve(task_status)

    async def list_sessions(self, status: str | None = None) -> list[SessionInfo]:
        """Sessions known to the store, with status, owner, lease and step count (bundled
        stores). ``status``: ``"running"``, ``"completed"``, ``"failed"``, ``"interrupted"``
        (stopped by the application: to be resumed), ``"imported"`` (sessions copied from a
        jeevesagent 0.9.7 journal, not run since), or ``"cancelled"`` (sessions that ended so
        before this release)."""
        self._check_open()
        if status is not None and status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {SESSION_STATUSES}, not {status!r}")
        return await self._backend.list_sessions(status)

    async def orphaned_sessions(self) -> list[SessionInfo]:
        """Sessions to resume: those left ``running`` by an owner that is gone (its lease
        expired by the store's clock, or its process on this host, in this pid namespace, no
        longer exists), and those ``interrupted`` by
        the application's own shutdown. Resume them by running them again (see
        docs/guides/workflows.md); another worker may resume one first, so opening one can raise
        :class:`SessionBusyError` -- skip it then. Oldest first."""
        self._check_open()
        return await orphaned(self._backend)

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
        self._check_open()
        return await self._backend.prune(
            older_than=older_than, sessions=sessions, status=status, dry_run=dry_run
        )

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
        self._signals.wake_all()  # waiters wake, see the runtime closed, and raise
        if self._owns_store or self._backend is not self.store:
            await self._backend.aclose()  # the adapter of a five-method store, or our own store

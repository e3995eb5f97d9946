"""The journaled runtime: every step, stream step and received signal is recorded in a store and
replayed from it when the session runs again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from ._base import (
    BaseRuntime,
    BaseSession,
    SessionState,
    StreamStep,
    call_step_fn,
    open_producer,
)
from ._codec import (
    PickleCodec,
    decode_value,
    encode_value,
    fingerprint,
    idempotency_journal_key,
    signal_journal_key,
    step_journal_key,
)
from ._errors import StoreError
from ._store import (
    STEP,
    STREAM,
    InMemoryJournalStore,
    JournalEntry,
    JournalStore,
    NativeStore,
    Record,
    Row,
)

__all__ = ["JournaledRuntime", "JournaledSession"]


class JournaledSession(BaseSession):
    """A session of a :class:`JournaledRuntime`: ``.id`` and ``await deliver(name, payload)``."""

    _state: _JState | None = None

    def __repr__(self) -> str:
        steps = len(self._state.steps) if self._state is not None else 0
        pending = self._runtime._mailbox.pending(self.id) if self._runtime else 0
        return f"<JournaledSession id={self.id!r} steps={steps} pending_signals={pending}>"


class _JState(SessionState):
    """One open session's journal, held in memory while it is open.

    ``steps``/``streams`` map journal keys to encoded rows (bundled stores, loaded in one round
    trip when the session opens, so replay never reads the database) or to decoded values (a
    third-party store, read per step).
    """

    def __init__(self, session_id: str, runtime: JournaledRuntime) -> None:
        super().__init__(session_id)
        self.steps: dict[str, Row | JournalEntry] = {}
        self.streams: dict[str, Row | list[Any]] = {}
        self.inflight: dict[str, anyio.Event] = {}
        self.signals_received: dict[str, int] = {}
        self.buffer: list[Record] = []  # recorded here, not yet handed to the store
        self.write_error: BaseException | None = None  # a buffered commit failed: stop
        self.flusher = False
        self.session = JournaledSession(session_id, runtime)
        self.session._state = self


class JournaledRuntime(BaseRuntime[_JState]):
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
    ) -> None:
        super().__init__()
        if durability not in ("commit", "buffered"):
            raise ValueError(f"durability must be 'commit' or 'buffered', not {durability!r}")
        self.durability = durability
        self.flush_interval = flush_interval
        self._owns_store = store is None
        self.store: JournalStore = store if store is not None else InMemoryJournalStore()
        self._native: NativeStore | None = (
            self.store if isinstance(self.store, NativeStore) else None
        )
        self._codec: PickleCodec = self._native.codec if self._native else PickleCodec()
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
    def _new_state(self, session_id: str) -> _JState:
        return _JState(session_id, self)

    def _session_object(self, state: _JState) -> JournaledSession:
        return state.session

    async def _load_state(self, state: _JState) -> None:
        if self._native is not None:
            journal = await self._native.load_session(state.id)
            state.steps.update(journal.steps)
            state.streams.update(journal.streams)

    def _require_open(self, state: _JState, step: str) -> None:
        self._check_open(state.id, step)
        if self._native is not None:
            self._native.check_open(state.id, step)
        if state.write_error is not None:
            raise StoreError(
                f"session {state.id!r}, step {step!r}: an earlier buffered journal commit of "
                f"this session failed ({state.write_error}); the session cannot go on without "
                "it. Open the session again to resume from what was committed.",
                session_id=state.id,
                step=step,
            ) from state.write_error

    def _context_entered(self, state: _JState, tg: TaskGroup) -> None:
        if self._buffered and not state.flusher:
            state.flusher = True
            tg.start_soon(self._flush_periodically, state)

    async def _flush_periodically(self, state: _JState) -> None:
        try:
            while state.write_error is None:
                await anyio.sleep(self.flush_interval)
                if state.buffer:
                    with anyio.CancelScope(shield=True):
                        await self._flush(state)
        except StoreError:
            pass  # recorded in state.write_error; the session's next step raises it
        finally:
            state.flusher = False

    async def _context_exiting(self, state: _JState) -> None:
        await self._flush(state)

    async def _flush(self, state: _JState) -> None:
        """Commit the session's buffered records (in order, in one transaction)."""
        records, state.buffer = state.buffer, []
        if not records or self._native is None:
            return
        try:
            conflicts = await self._native.append(records)
        except Exception as exc:
            if not self._buffered:
                state.buffer[:0] = records  # nobody saw them as committed: keep for the next try
                raise
            state.write_error = exc
            raise StoreError(
                f"session {state.id!r}: {len(records)} buffered journal records could not be "
                f"committed ({exc}). The journal keeps what was committed before them; open the "
                "session again to resume from there.",
                session_id=state.id,
                step=records[0].key,
            ) from exc
        self._adopt(state, conflicts)

    @staticmethod
    def _adopt(state: _JState, conflicts: dict[tuple[str, int, str], Row]) -> None:
        # Someone else recorded these keys first (another runtime on the same store): everyone
        # sees the first record.
        for (_, kind, key), row in conflicts.items():
            (state.steps if kind == STEP else state.streams)[key] = row

    # -- journal access --------------------------------------------------------------------------
    def _decode(self, state: _JState, key: str, row: Row | JournalEntry) -> Any:
        if isinstance(row, JournalEntry):
            return row.value
        return decode_value(self._codec, row.data, session_id=state.id, step=key)

    async def _lookup_step(self, state: _JState, key: str) -> Row | JournalEntry | None:
        row = state.steps.get(key)
        if row is None and self._native is None:
            row = await self.store.get_step(state.id, key)
            if row is not None:
                state.steps[key] = row
        return row

    async def _record(self, state: _JState, kind: int, key: str, value: Any, data: bytes) -> Any:
        """Commit one record and return the value every reader will see for ``key``.

        The write is shielded: once ``fn`` has returned, its result is the step's outcome, and a
        cancellation arriving during the commit must not leave us unsure whether it landed.
        """
        table: dict[str, Any] = state.steps if kind == STEP else state.streams
        native = self._native
        if native is None:
            return await self._record_foreign(state, kind, key, value)
        record = Record(state.id, kind, key, data, time.time())
        table[key] = Row(data, record.created_at)  # visible to this run at once
        if self._buffered:
            state.buffer.append(record)
            if len(state.buffer) >= 256:
                await self._flush(state)
            return value
        # Commit mode: the record (and any receipt poll_signal buffered) commits now, shielded.
        state.buffer.append(record)
        try:
            await self._flush(state)
        except BaseException:
            del table[key]
            state.buffer = [r for r in state.buffer if r is not record]
            raise
        row = table[key]
        if isinstance(row, Row) and row.data != data:
            return decode_value(self._codec, row.data, session_id=state.id, step=key)
        return value

    async def _record_foreign(self, state: _JState, kind: int, key: str, value: Any) -> Any:
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
        if state is None:
            self._check_open(None, name)
            return await call_step_fn(fn, args, kwargs)
        self._require_open(state, name)
        if idempotency_key is not None:
            key = idempotency_journal_key(str(idempotency_key))
        else:
            key = step_journal_key(name, fingerprint(args, kwargs, session_id=state.id, step=name))
        while True:
            row = await self._lookup_step(state, key)
            if row is not None:
                return self._decode(state, key, row)
            running = state.inflight.get(key)
            if running is None:
                break
            # Same key already running in this session: wait for it, then take its result (or,
            # if it failed, run it ourselves).
            await running.wait()
        done = state.inflight[key] = anyio.Event()
        try:
            result = await call_step_fn(fn, args, kwargs)
            data = b""
            if self._native is not None:
                data = encode_value(self._codec, result, session_id=state.id, step=key)
            return await self._record(state, STEP, key, result, data)
        finally:
            del state.inflight[key]
            done.set()

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
        if state is None:
            self._check_open(None, name)

            async def run_unjournaled() -> tuple[None, AsyncIterator[Any]]:
                return None, await open_producer(fn, args, kwargs)

            return StreamStep(run_unjournaled, None)
        self._require_open(state, name)
        key = step_journal_key(name, fingerprint(args, kwargs, session_id=state.id, step=name))

        async def start() -> tuple[list[Any] | None, AsyncIterator[Any] | None]:
            self._require_open(state, name)
            recorded = await self._lookup_stream(state, key)
            if recorded is not None:
                return recorded, None
            return None, await open_producer(fn, args, kwargs)

        async def complete(chunks: list[Any]) -> None:
            data = b""
            if self._native is not None:
                data = encode_value(
                    self._codec, chunks, session_id=state.id, step=key, what="stream chunks"
                )
            await self._record(state, STREAM, key, chunks, data)

        return StreamStep(start, complete)

    async def _lookup_stream(self, state: _JState, key: str) -> list[Any] | None:
        row = state.streams.get(key)
        if row is None:
            if self._native is not None:
                return None
            chunks = await self.store.get_stream(state.id, key)
            if chunks is None:
                return None
            state.streams[key] = row = chunks
        if isinstance(row, Row):
            decoded: list[Any] = decode_value(self._codec, row.data, session_id=state.id, step=key)
            return decoded
        return list(row)

    # -- signals ---------------------------------------------------------------------------------
    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        """Send a signal to a session (queued until a waiter takes it; FIFO per name).

        The payload is encoded now, so a payload that cannot be journaled fails here, at the
        sender, rather than later in the receiving session.
        """
        self._check_open(session_id, name)
        data = encode_value(
            self._codec, payload, session_id=session_id, step=f"signal {name!r}", what="payload"
        )
        self._mailbox.put(session_id, name, data)

    def _replay_signal(self, state: _JState, name: str) -> tuple[bool, Any]:
        index = state.signals_received.get(name, 0)
        key = signal_journal_key(name, index)
        row = state.steps.get(key)
        if row is None:
            return False, None
        state.signals_received[name] = index + 1
        return True, self._decode(state, key, row)

    def _receipt(self, state: _JState, name: str, data: bytes) -> tuple[str, Any]:
        index = state.signals_received.get(name, 0)
        state.signals_received[name] = index + 1
        key = signal_journal_key(name, index)
        return key, decode_value(self._codec, data, session_id=state.id, step=key)

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the next signal ``name``; ``TimeoutError`` after ``timeout`` seconds.

        In a session open in this runtime the receipt is journaled: a replay returns the same
        payload without waiting again.
        """
        self._check_open(session_id, name)
        state = self._states.get(session_id)
        if state is None:
            data = await self._mailbox.get(session_id, name, timeout)
            return decode_value(self._codec, data, session_id=session_id, step=name)
        if self._native is None:
            await self._lookup_step(
                state, signal_journal_key(name, state.signals_received.get(name, 0))
            )
        replayed, value = self._replay_signal(state, name)
        if replayed:
            return value
        if state.buffer:
            await self._flush(state)  # do not hold records back while blocked
        data = await self._mailbox.get(session_id, name, timeout)
        key, value = self._receipt(state, name, data)
        await self._record(state, STEP, key, value, data)
        return value

    def poll_signal(self, session_id: str, name: str) -> Any:
        """Take the next queued signal ``name`` without waiting; ``None`` if nothing is queued.

        In a session open in this runtime a replay returns the journaled payload; a live receipt
        is journaled with the session's next record, or when the session context exits. With a
        third-party store (no bulk load), a replay cannot be read here: ``wait_for_signal``
        replays such receipts.
        """
        self._check_open(session_id, name)
        state = self._states.get(session_id)
        if state is not None:
            replayed, value = self._replay_signal(state, name)
            if replayed:
                return value
        got, data = self._mailbox.get_nowait(session_id, name)
        if not got:
            return None
        if state is None:
            return decode_value(self._codec, data, session_id=session_id, step=name)
        key, value = self._receipt(state, name, data)
        if self._native is None:
            # A third-party store has no buffer: commit in the session's task group.
            state.steps[key] = JournalEntry(value, time.time())
            if state.task_groups:
                state.spawn(partial(self._record, state, STEP, key, value, data))
            return value
        # Visible to this run at once; committed with the session's next record, by the next
        # flush, or when the session context exits (poll_signal is synchronous).
        record = Record(state.id, STEP, key, data, time.time())
        state.steps[key] = Row(data, record.created_at)
        state.buffer.append(record)
        return value

    # -- closing ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the runtime, and the store if the runtime created it. Idempotent."""
        if self._closed:
            return
        await super().aclose()
        if self._owns_store:
            await self.store.aclose()

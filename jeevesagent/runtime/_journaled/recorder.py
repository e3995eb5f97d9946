"""The recorder of a journaled runtime: finding a session's recorded rows, and recording new ones
-- committed before the caller goes on (``durability="commit"``) or buffered and committed in
order in batches (``"buffered"``) -- through the store's group commit.

A session's journal is loaded when it opens. A store that cannot load a whole session (a
five-method ``JournalStore`` behind its adapter) says so, and rows not found in memory are then
read one by one.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from .._core import observe as _observe
from .._core.keys import describe_key
from .._core.values import JournalCodec, decode_value, encode_value
from .._errors import SessionBusyError, StoreError
from .._journal.backend import STEP, STREAM, JournalBackend, Record, Row
from .state import JournaledState

__all__ = ["Recorder"]

# A buffered session commits at the latest when this many records are waiting.
MAX_BUFFERED = 256


class Recorder:
    """Reads and writes the journal rows of one runtime's sessions in ``backend``."""

    def __init__(
        self, backend: JournalBackend, owner_id: str, *, buffered: bool, flush_interval: float
    ) -> None:
        self.backend = backend
        self.codec: JournalCodec = backend.codec
        self.owner_id = owner_id
        self.buffered = buffered
        self.flush_interval = flush_interval

    # -- reading ---------------------------------------------------------------------------------
    def decode(self, state: JournaledState, key: str, row: Row, kind: int = STEP) -> Any:
        return decode_value(self.codec, row.data, session_id=state.id, step=key, kind=kind)

    async def lookup_step(self, state: JournaledState, key: str) -> Row | None:
        """The recorded step row ``key`` of the session, or ``None``."""
        row = state.steps.get(key)
        if row is None and not state.loaded:
            row = await self.backend.load_row(state.id, STEP, key)
            if row is not None:
                state.steps[key] = row
        return row

    async def lookup_stream(self, state: JournaledState, key: str) -> list[Any] | None:
        """The recorded chunks of stream step ``key``, decoded, or ``None``."""
        row = state.streams.get(key)
        if row is None and not state.loaded:
            row = await self.backend.load_row(state.id, STREAM, key)
            if row is not None:
                state.streams[key] = row
        if row is None:
            return None
        chunks: list[Any] = self.decode(state, key, row, STREAM)
        return chunks

    # -- writing ---------------------------------------------------------------------------------
    def encode(
        self, state: JournaledState, key: str, value: Any, kind: int = STEP, what: str = "result"
    ) -> bytes:
        return encode_value(self.codec, value, session_id=state.id, step=key, kind=kind, what=what)

    async def record(
        self, state: JournaledState, kind: int, key: str, value: Any, data: bytes
    ) -> Any:
        """Record ``value`` (encoded as ``data``) and return the value every reader will see
        for ``key``: the first one recorded.

        The write is shielded: once ``fn`` has returned, its result is the step's outcome, and a
        cancellation arriving during the commit must not leave us unsure whether it landed.
        """
        table = state.steps if kind == STEP else state.streams
        record = Record(state.id, kind, key, data, time.time())
        if self.buffered:
            table[key] = Row(data, record.created_at)  # buffered: visible to this run at once
            state.buffer.append(record)
            if len(state.buffer) >= MAX_BUFFERED:
                await self.flush(state)
            return value
        # Commit mode: the record (and any receipt poll_signal buffered) commits now, shielded.
        # Nobody sees it before the commit succeeded: a concurrent caller of the same key waits
        # on `inflight`, and must never return a value the journal may not keep.
        state.buffer.append(record)
        try:
            await self.flush(state)
        except BaseException:
            state.buffer = [r for r in state.buffer if r is not record]
            raise
        # A conflict adopted by the flush (another runtime recorded the key first) wins.
        row = table.setdefault(key, Row(data, record.created_at))
        if row.data != data:
            return self.decode(state, key, row, kind)
        return value

    async def record_chunks(self, state: JournaledState, key: str, data: bytes) -> None:
        """Journal a batch of a running stream step's chunks (a ``c:`` key, kind STREAM): in
        commit mode committed now, with any records buffered before it (so the journal stays a
        prefix); in buffered mode with the session's next batch. Kept in ``state.streams`` too:
        the same stream step called again in this run (after its producer failed) starts from
        this prefix, as a resumed run would."""
        record = Record(state.id, STREAM, key, data, time.time())
        state.buffer.append(record)
        if not self.buffered or len(state.buffer) >= MAX_BUFFERED:
            await self.flush(state)
        state.streams.setdefault(key, Row(data, record.created_at))

    def buffer(self, state: JournaledState, key: str, value: Any) -> None:
        """Journal a step row without awaiting (for synchronous callers): it commits with the
        session's next record, or when the session exits."""
        record = Record(state.id, STEP, key, self.encode(state, key, value), time.time())
        state.steps[key] = Row(record.data, record.created_at)
        state.buffer.append(record)

    async def flush(self, state: JournaledState) -> None:
        """Commit the session's buffered records (in order, in one transaction)."""
        records, state.buffer = state.buffer, []
        if not records:
            return
        if state.write_error is not None:
            # An earlier batch was lost: committing later records would leave a gap in the
            # journal (a later step without an earlier one). Refuse them all.
            raise state.write_failed(describe_key(records[0].key))
        try:
            owners = {state.id: self.owner_id} if state.claimed else None
            conflicts = await self.backend.append(records, owners)
        except Exception as exc:
            _observe.commit_failed(state.id, len(records), exc, self.buffered)
            if not self.buffered:
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

    async def commit_outcome(self, state: JournaledState) -> None:
        """Commit the session's outcome record now, with the records buffered before it (for a
        session whose end, which would carry it, is still to come)."""
        state.buffer, state.outcome = [*state.buffer, *state.outcome], []
        await self.flush(state)

    async def flush_periodically(self, state: JournaledState) -> None:
        """Buffered mode: commit every ``flush_interval`` seconds while the session is open.

        A failed flush raises here, in the session's task group: the session stops with the
        error at once (and every later write of the session is refused, see :meth:`flush`)."""
        while True:
            await anyio.sleep(self.flush_interval)
            if state.buffer:
                with anyio.CancelScope(shield=True):
                    await self.flush(state)

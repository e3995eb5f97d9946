"""The adapter that lifts a five-method :class:`JournalStore` (the published protocol) to the full
:class:`JournalBackend` contract, so ``JournaledRuntime`` has one code path for every store.

A five-method store keeps journal rows only, as decoded values, and cannot list them. The adapter
supplies the rest, with the slower paths that implies:

- **Journal rows** go to the wrapped store as values: a record is decoded before ``put_step`` /
  ``put_stream`` and read back afterwards (the store keeps the first value written, and every
  caller must see that one). A session's journal cannot be bulk-loaded, so
  :meth:`read_session` says it is incomplete and the runtime reads each key it does not hold
  with :meth:`read_row` (one ``get_step`` per step on the first run).
- **The sessions table and the mailbox** live in this process's memory, in this adapter: a
  five-method store has nowhere to keep them. So claims exclude only runtimes sharing this
  adapter, signals reach only sessions run by this process, and ``list_sessions`` lists the
  sessions this process opened. Nothing else is lost: signals that were received are journaled
  in the store, and replay from it.
- **prune** cannot delete anything from a store without a delete method: it raises
  ``TypeError``.

Its codec is plain pickle, unsigned: the wrapped store holds values, not signed rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._core.values import (
    decode_value,
    encode_value,
    signal_context,
    split_nonce,
)
from .backend import JournalStore, PruneResult, SessionJournal
from .local import LocalBackend, LocalMailbox
from .rows import STEP, Record, Row

__all__ = ["StoreAdapter"]


class StoreAdapter(LocalBackend):
    """A :class:`JournalBackend` over any object with the five :class:`JournalStore` methods.

    The wrapped store stays its owner's: closing the adapter does not close it.
    """

    def __init__(self, store: JournalStore) -> None:
        super().__init__(codec="pickle", signing_key="")
        self.store = store

    def __repr__(self) -> str:
        return f"<StoreAdapter of {self.store!r}>"

    # -- the journal, in the wrapped store -------------------------------------------------------
    async def read_session(self, session_id: str) -> SessionJournal:
        return SessionJournal({}, {}, complete=False)

    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        if kind == STEP:
            entry = await self.store.get_step(session_id, key)
            if entry is None:
                return None
            return Row(self._encode(session_id, kind, key, entry.value), entry.created_at)
        chunks = await self.store.get_stream(session_id, key)
        if chunks is None:
            return None
        # get_stream says nothing of when the stream was recorded.
        return Row(self._encode(session_id, kind, key, list(chunks)), 0.0)

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        self._sessions.fence(owners)
        # Decode everything first: a row that cannot be decoded fails the batch before anything
        # reaches the store. Then write in order, so the journal stays a prefix.
        values = [
            decode_value(self.codec, r.data, session_id=r.session_id, step=r.key, kind=r.kind)
            for r in records
        ]
        conflicts: dict[tuple[str, int, str], Row] = {}
        for record, value in zip(records, values, strict=True):
            kept = await self._put(record.session_id, record.kind, record.key, value)
            if kept is not None and kept.data != record.data:
                conflicts[(record.session_id, record.kind, record.key)] = kept
        return conflicts

    async def _put(self, session_id: str, kind: int, key: str, value: Any) -> Row | None:
        """Write one value, and return the row the store kept (the first one written)."""
        if kind == STEP:
            await self.store.put_step(session_id, key, value)
        else:
            await self.store.put_stream(session_id, key, value)
        return await self.read_row(session_id, kind, key)

    def _encode(self, session_id: str, kind: int, key: str, value: Any) -> bytes:
        return encode_value(self.codec, value, session_id=session_id, step=key, kind=kind)

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        raise TypeError(
            f"prune() cannot delete from {type(self.store).__name__}: a store with only the five "
            "published JournalStore methods has no way to delete rows. Use a bundled store "
            "(SqliteJournalStore, PostgresJournalStore), or subclass JournalBackend."
        )

    async def close_resources(self) -> None:
        await super().close_resources()
        self._mailbox = LocalMailbox()  # signals that were never received go with the process

    # -- the mailbox, in this process ------------------------------------------------------------
    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        self.check_open(session_id, name)
        if key is not None:
            existing = await self.read_row(session_id, STEP, key)
            if existing is not None:
                return existing
        signal = self._mailbox.pop(session_id, name)
        if signal is None or key is None:
            return signal
        # Taken from the mailbox and journaled, or neither: a signal whose receipt could not be
        # written goes back to the head of its queue.
        try:
            self._sessions.fence({session_id: owner} if owner is not None else None)
            data, context = split_nonce(signal.data, signal_context(name))
            payload = decode_value(
                self.codec, data, session_id=session_id, step=key, context=context
            )
            row = await self._put(session_id, STEP, key, payload)
        except BaseException:
            self._mailbox.put_back(session_id, name, signal)
            raise
        return row if row is not None else Row(self._encode(session_id, STEP, key, payload), 0.0)

    # -- the sessions table, in this process -----------------------------------------------------

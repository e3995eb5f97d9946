"""The in-memory store: a dict-backed :class:`JournalBackend` for tests and prototyping."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from .._core.keys import is_chunks_key
from .._core.values import Codec
from .backend import PruneResult, SessionJournal
from .local import LocalBackend
from .rows import STEP, Record, Row
from .rules import PruneCandidate, select_prunable

__all__ = ["InMemoryJournalStore"]


class InMemoryJournalStore(LocalBackend):
    """A dict-backed store: nothing survives the process. For tests and prototyping.

    Values are kept encoded, exactly as a durable store would keep them, so a test on this store
    sees the same encoding errors and the same copy-on-replay behaviour as production.
    """

    def __init__(
        self, *, codec: str | Codec | None = None, signing_key: str | bytes | None = None
    ) -> None:
        """``codec`` and ``signing_key``: see :class:`SqliteJournalStore`."""
        super().__init__(codec=codec, signing_key=signing_key)
        self._rows: dict[str, SessionJournal] = {}

    def __repr__(self) -> str:
        n = sum(len(j.steps) + len(j.streams) for j in self._rows.values())
        state = "closed" if self._closed else "open"
        return f"<InMemoryJournalStore {state} sessions={len(self._rows)} rows={n}>"

    def step_keys(self) -> list[tuple[str, str]]:
        """Every recorded ``(session_id, journal key)`` of steps (signal receipts included)."""
        return [(sid, key) for sid, j in self._rows.items() for key in j.steps]

    def stream_keys(self) -> list[tuple[str, str]]:
        """Every recorded ``(session_id, journal key)`` of completed stream steps (not the
        batches of chunks journaled while a stream step runs)."""
        return [
            (sid, key)
            for sid, j in self._rows.items()
            for key in j.streams
            if not is_chunks_key(key)
        ]

    async def read_session(self, session_id: str) -> SessionJournal:
        j = self._rows.get(session_id)
        if j is None:
            return SessionJournal({}, {})
        return SessionJournal(dict(j.steps), dict(j.streams))

    # write_rows never waits: the group committer need not shield it (see _journal/commit).
    write_rows_shielded = True

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        self._sessions.fence(owners)
        conflicts: dict[tuple[str, int, str], Row] = {}
        for r in records:
            j = self._rows.get(r.session_id)
            if j is None:
                j = self._rows[r.session_id] = SessionJournal({}, {})
            table = j.steps if r.kind == STEP else j.streams
            existing = table.get(r.key)
            if existing is not None:
                conflicts[(r.session_id, r.kind, r.key)] = existing
            else:
                table[r.key] = Row(r.data, r.created_at)
        return conflicts

    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        j = self._rows.get(session_id)
        if j is None:
            return None
        return (j.steps if kind == STEP else j.streams).get(key)

    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        self.check_open(session_id, name)
        journal = self._rows.get(session_id)
        if key is not None and journal is not None and key in journal.steps:
            return journal.steps[key]
        if self._mailbox.peek(session_id, name) is None:
            return None
        if key is not None:
            self._sessions.fence({session_id: owner} if owner is not None else None)
        signal = self._mailbox.pop(session_id, name)
        assert signal is not None
        row = Row(signal.data, time.time())
        if key is not None:
            self._rows.setdefault(session_id, SessionJournal({}, {})).steps[key] = row
        return row

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        # No await in here: nothing else runs on this store between the check and the deletes.
        now = time.time()
        queues = self._mailbox.queues
        known = set(self._sessions.rows) | set(self._rows) | {sid for sid, _ in queues}
        ids = known if sessions is None else known.intersection(sessions)
        candidates = []
        for sid in ids:
            info = self._sessions.rows.get(sid)
            if info is not None:
                candidates.append(
                    PruneCandidate(
                        sid, info.status, info.owner, info.lease_expires, info.updated_at
                    )
                )
                continue
            j = self._rows.get(sid, SessionJournal({}, {}))
            times = [r.created_at for r in (*j.steps.values(), *j.streams.values())]
            times += [r.created_at for (s, _), q in queues.items() if s == sid for r in q]
            candidates.append(PruneCandidate(sid, None, None, None, max(times, default=0.0)))
        result = select_prunable(candidates, older_than, statuses, now)
        if not dry_run:
            for sid in result.pruned:
                self._rows.pop(sid, None)
                self._sessions.rows.pop(sid, None)
                self._mailbox.drop(sid)
        return result

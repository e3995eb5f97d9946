"""The in-memory store: a dict-backed :class:`JournalBackend` for tests and prototyping."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

from .._core.values import Codec
from .backend import JournalBackend, PruneResult, SessionInfo, SessionJournal
from .commit import Fenced
from .rows import STEP, Record, Row
from .rules import PruneCandidate, claimable, select_prunable

__all__ = ["InMemoryJournalStore"]


class InMemoryJournalStore(JournalBackend):
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
        self._mailbox: dict[tuple[str, str], deque[Row]] = {}
        self._sessions: dict[str, SessionInfo] = {}

    def __repr__(self) -> str:
        n = sum(len(j.steps) + len(j.streams) for j in self._rows.values())
        state = "closed" if self._closed else "open"
        return f"<InMemoryJournalStore {state} sessions={len(self._rows)} rows={n}>"

    def step_keys(self) -> list[tuple[str, str]]:
        """Every recorded ``(session_id, journal key)`` of steps (signal receipts included)."""
        return [(sid, key) for sid, j in self._rows.items() for key in j.steps]

    def stream_keys(self) -> list[tuple[str, str]]:
        """Every recorded ``(session_id, journal key)`` of stream steps."""
        return [(sid, key) for sid, j in self._rows.items() for key in j.streams]

    async def read_session(self, session_id: str) -> SessionJournal:
        j = self._rows.get(session_id)
        if j is None:
            return SessionJournal({}, {})
        return SessionJournal(dict(j.steps), dict(j.streams))

    def _fence(self, owners: Mapping[str, str] | None) -> None:
        if owners:
            fenced = {
                sid
                for sid, owner in owners.items()
                if (info := self._sessions.get(sid)) is None or info.owner != owner
            }
            if fenced:
                raise Fenced(fenced)

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        self._fence(owners)
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

    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        self.check_open(session_id, name)
        self._mailbox.setdefault((session_id, name), deque()).append(Row(data, created_at))

    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        self.check_open(session_id, name)
        journal = self._rows.get(session_id)
        if key is not None and journal is not None and key in journal.steps:
            return journal.steps[key]
        queue = self._mailbox.get((session_id, name))
        if not queue:
            return None
        if key is not None:
            self._fence({session_id: owner} if owner is not None else None)
        signal = queue.popleft()
        if not queue:
            del self._mailbox[(session_id, name)]
        row = Row(signal.data, time.time())
        if key is not None:
            self._rows.setdefault(session_id, SessionJournal({}, {})).steps[key] = row
        return row

    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        self.check_open(session_id)
        now = time.time()
        info = self._sessions.get(session_id)
        if info is None:
            info = SessionInfo(session_id, "running", owner, now + lease, now, now, 0)
        elif claimable(info, owner, now):
            info = info._replace(
                status="running", owner=owner, lease_expires=now + lease, updated_at=now
            )
        self._sessions[session_id] = info
        return info

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        self.check_open(session_id)
        info = self._sessions.get(session_id)
        if info is None or info.owner != owner:
            return False
        now = time.time()
        self._sessions[session_id] = info._replace(lease_expires=now + lease, updated_at=now)
        return True

    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        self.check_open(session_id)
        info = self._sessions.get(session_id)
        if info is not None and info.owner == owner:
            self._sessions[session_id] = info._replace(
                status=status, owner=None, lease_expires=None, updated_at=time.time(), steps=steps
            )

    async def list_sessions(self, status: str | None = None) -> list[SessionInfo]:
        self.check_open()
        rows = [i for i in self._sessions.values() if status is None or i.status == status]
        return sorted(rows, key=lambda i: i.created_at)

    async def pending_signals(self, session_id: str) -> int:
        self.check_open(session_id)
        return sum(len(q) for (sid, _), q in self._mailbox.items() if sid == session_id)

    async def pending_names(self, session_id: str) -> list[str]:
        self.check_open(session_id)
        return sorted(name for (sid, name) in self._mailbox if sid == session_id)

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        # No await in here: nothing else runs on this store between the check and the deletes.
        now = time.time()
        known = set(self._sessions) | set(self._rows) | {sid for sid, _ in self._mailbox}
        ids = known if sessions is None else known.intersection(sessions)
        candidates = []
        for sid in ids:
            info = self._sessions.get(sid)
            if info is not None:
                candidates.append(
                    PruneCandidate(
                        sid, info.status, info.owner, info.lease_expires, info.updated_at
                    )
                )
                continue
            j = self._rows.get(sid, SessionJournal({}, {}))
            times = [r.created_at for r in (*j.steps.values(), *j.streams.values())]
            times += [r.created_at for (s, _), q in self._mailbox.items() if s == sid for r in q]
            candidates.append(PruneCandidate(sid, None, None, None, max(times, default=0.0)))
        result = select_prunable(candidates, older_than, statuses, now)
        if not dry_run:
            for sid in result.pruned:
                self._rows.pop(sid, None)
                self._sessions.pop(sid, None)
                for key in [k for k in self._mailbox if k[0] == sid]:
                    del self._mailbox[key]
        return result

    def take_signal_nowait(self, session_id: str, name: str) -> Row | None:
        queue = self._mailbox.get((session_id, name))
        if not queue:
            return None
        signal = queue.popleft()
        if not queue:
            del self._mailbox[(session_id, name)]
        return signal

    async def close_resources(self) -> None:
        pass

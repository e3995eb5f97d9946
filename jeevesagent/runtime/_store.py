"""The journal store contract, the shared base of the bundled stores, and the in-memory store.

``JournalStore`` is the published five-method protocol; any object with those methods works with
``JournaledRuntime`` (one store call per step). The bundled stores derive from :class:`NativeStore`,
which adds what the runtime uses to go fast: a bulk load of a whole session and batched inserts of
already-encoded rows in one transaction.
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

from ._commit import Fenced, GroupCommitter
from ._errors import StoreClosedError
from ._rows import STEP, STREAM, Record, Row
from ._values import Codec, JournalCodec, decode_value, encode_value

__all__ = [
    "STEP",
    "Fenced",
    "SessionInfo",
    "STREAM",
    "InMemoryJournalStore",
    "JournalEntry",
    "JournalStore",
    "NativeStore",
    "PruneResult",
    "Record",
    "Row",
    "SessionJournal",
]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A recorded step result.

    :ivar value: the value the step returned (``None`` is a valid recorded value)
    :ivar created_at: when it was recorded, in epoch seconds
    """

    value: Any
    created_at: float


@runtime_checkable
class JournalStore(Protocol):
    """Where a journaled runtime keeps its records.

    Keys are journal keys derived by the runtime (see ``JournaledRuntime``), not bare step names.
    A record, once written, is never replaced: a second ``put_step`` for the same key keeps the
    first value, so every reader sees one recorded value per step.
    """

    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        """Return the recorded entry for the key, or ``None`` if there is none."""
        ...

    async def put_step(self, session_id: str, step_name: str, value: Any) -> None:
        """Record a step's value (committed when this returns)."""
        ...

    async def get_stream(self, session_id: str, step_name: str) -> list[Any] | None:
        """Return the recorded chunks of a completed stream step, or ``None``."""
        ...

    async def put_stream(self, session_id: str, step_name: str, chunks: list[Any]) -> None:
        """Record the complete chunk list of a stream step."""
        ...

    async def aclose(self) -> None:
        """Release the store's threads, connections and files. Idempotent."""
        ...


class SessionInfo(NamedTuple):
    """A row of the sessions table: who runs a session, and how it last ended."""

    session_id: str
    status: str  # one of SESSION_STATUSES
    owner: str | None  # the runtime holding the claim, or None
    lease_expires: float | None  # epoch seconds (the store's clock); None when released
    created_at: float
    updated_at: float
    steps: int  # journal rows of the session when it was last released


# "imported": a session copied from a jeevesagent 0.9.7 journal by the schema migration; it has
# never run under this version (claiming it sets it to "running" like any other).
# "interrupted": the body was stopped by the application's own shutdown (a cancelled scope or
# task group, KeyboardInterrupt): resumable, and found by recovery like an orphan.
SESSION_STATUSES = ("running", "completed", "failed", "cancelled", "interrupted", "imported")


class PruneResult(NamedTuple):
    """What :meth:`NativeStore.prune` did (or, with ``dry_run=True``, would do)."""

    pruned: list[str]  # sessions whose journal rows, mailbox and sessions row were deleted
    skipped: list[str]  # sessions that matched but were left alone because a live runtime owns them


class PruneCandidate(NamedTuple):
    """A session as the prune filters see it: backends list them, ``_select_prunable`` decides."""

    session_id: str
    status: str | None  # None: the session has journal or mailbox rows but no sessions row
    owner: str | None
    lease_expires: float | None
    last_activity: float  # sessions.updated_at, else the newest created_at of its rows


@dataclass(slots=True)
class SessionJournal:
    """Everything recorded for one session, as loaded in one round trip."""

    steps: dict[str, Row]
    streams: dict[str, Row]


class NativeStore(abc.ABC):
    """Base of the bundled stores: encoding, closed-state checks and the public protocol methods,
    on top of four primitives a backend implements (``_load``, ``_insert``, ``_get``, ``_close``).
    """

    codec: JournalCodec
    _closed: bool = False

    def __init__(
        self, *, codec: str | Codec | None = None, signing_key: str | bytes | None = None
    ) -> None:
        self.codec = JournalCodec(codec, signing_key)
        self._closed = False
        self._committer = GroupCommitter(self._insert)

    # -- primitives ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def _load(self, session_id: str) -> SessionJournal:
        """Load every row of one session (one round trip)."""

    @abc.abstractmethod
    async def _insert(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        """Insert rows in one transaction; first writer wins.

        Returns the rows already present for keys that conflicted, so the caller can adopt the
        value that was recorded first. Fencing: if ``owners`` maps a session id to an owner
        token and that session's row in the sessions table names another owner (or none),
        raise :class:`Fenced` with those session ids and insert nothing.
        """

    # -- durable coordination: mailbox and sessions table -----------------------------------------
    @abc.abstractmethod
    async def _send_signal(
        self, session_id: str, name: str, data: bytes, created_at: float
    ) -> None:
        """Append one signal to the session's mailbox and commit (wake listeners if any)."""

    @abc.abstractmethod
    async def _take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        """In one transaction, move the oldest mailbox signal of ``(session_id, name)`` into the
        journal as the STEP row ``key`` (value = its payload) and return that row; ``None`` if the
        queue is empty. If ``key`` is already journaled, return that row and take nothing. With
        ``key=None`` the signal is only removed from the mailbox (a receiver outside the session).
        Fencing as in ``_insert`` (raise :class:`Fenced`, change nothing)."""

    @abc.abstractmethod
    async def _claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        """Atomically take the session for ``owner`` if it is free: no row, no owner, the same
        owner, or an expired lease. Sets status ``running`` and the lease; returns the row as it
        is afterwards (compare ``.owner`` to know whether the claim was granted)."""

    @abc.abstractmethod
    async def _renew(self, session_id: str, owner: str, lease: float) -> bool:
        """Extend the lease if ``owner`` still holds it; ``False`` if the claim was lost."""

    @abc.abstractmethod
    async def _release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        """Record how the session ended and drop the claim (only if ``owner`` holds it)."""

    @abc.abstractmethod
    async def _list_sessions(self, status: str | None) -> list[SessionInfo]:
        """Rows of the sessions table, optionally of one status, oldest first."""

    @abc.abstractmethod
    async def _pending_signals(self, session_id: str) -> int:
        """How many signals wait in the session's mailbox."""

    @abc.abstractmethod
    async def _pending_names(self, session_id: str) -> list[str]:
        """The distinct names of the signals waiting in the session's mailbox."""

    @abc.abstractmethod
    async def _prune(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        """In one write transaction: find the sessions matching every given filter (see
        :meth:`prune`; arguments already checked), leave those with a live claim alone, and
        unless ``dry_run`` delete the others' journal rows, mailbox and sessions row."""

    async def _now(self) -> float:
        """The store's clock, in epoch seconds: the one its leases are measured on (a database
        server's, for a store that many hosts share). Local stores use this machine's clock."""
        return time.time()

    def _take_signal_nowait(self, session_id: str, name: str) -> Row | None:
        """Take a signal without I/O (no receipt), where the store can; ``None`` otherwise."""
        return None

    async def _watch(self, wake: Callable[[str], None]) -> bool:
        """Ask to have ``wake(session_id)`` called (in the calling event loop's thread) whenever
        a signal is sent to a session by anyone, in any process. Returns ``False`` when the store
        cannot push such notices now (then waiters poll). Idempotent per ``wake``, and called
        before every wait, so a call for a ``wake`` already registered should cost no I/O; ended
        by ``aclose()``."""
        return False

    @abc.abstractmethod
    async def _get(self, session_id: str, kind: int, key: str) -> Row | None:
        """Read one row."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release resources (called once)."""

    # -- used by the runtime ---------------------------------------------------------------------
    def check_open(self, session_id: str | None = None, step: str | None = None) -> None:
        if self._closed:
            where = f" (session {session_id!r}, step {step!r})" if session_id else ""
            raise StoreClosedError(
                f"{type(self).__name__} is closed{where}; open a new store and runtime to go on.",
                session_id=session_id,
                step=step,
            )

    async def load_session(self, session_id: str) -> SessionJournal:
        self.check_open(session_id)
        return await self._load(session_id)

    async def append(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        """Commit ``records`` (group commit: concurrent callers share one transaction).

        Returns when they are committed, with the rows already recorded for any key that
        conflicted (first writer wins).
        """
        if records:
            self.check_open(records[0].session_id, records[0].key)
        return await self._committer.commit(records, owners)

    # -- retention -------------------------------------------------------------------------------
    async def prune(
        self,
        *,
        older_than: float | None = None,
        sessions: Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> PruneResult:
        """Delete whole sessions: their journal rows, pending signals and sessions-table row.

        The filters combine (AND), and at least one is required, so ``prune()`` never empties a
        journal by accident:

        - ``older_than``: seconds; sessions whose last activity is earlier than that long ago.
          Last activity is the sessions row's ``updated_at`` (set on claim, lease renewal and
          release), or for a session without one, its newest journal row or signal.
        - ``sessions``: these session ids only.
        - ``status``: one or several of ``"running"``, ``"completed"``, ``"failed"``,
          ``"cancelled"``, ``"imported"`` (a session without a sessions row has none: it never
          matches a status filter).

        A matching session that a live runtime holds (owner set, lease not expired by the store's
        clock) is never deleted; it is reported in ``skipped``. The check and the deletes happen in
        one write transaction, so a runtime cannot claim a session half-way through its deletion.
        A pruned session that runs again starts from scratch. ``dry_run=True`` reports the same
        without deleting anything.

        :returns: the sorted session ids ``pruned`` (or that would be) and ``skipped``
        :raises ValueError: no filter, an unknown status, or a negative ``older_than``
        """
        if older_than is None and sessions is None and status is None:
            raise ValueError(
                "prune() needs at least one filter (older_than=, sessions= or status=); "
                "it never deletes every session by default"
            )
        statuses: tuple[str, ...] | None = None
        if status is not None:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            unknown = [s for s in statuses if s not in SESSION_STATUSES]
            if unknown:
                raise ValueError(
                    f"unknown session status {unknown[0]!r}; status must be one of "
                    f"{SESSION_STATUSES}"
                )
        if older_than is not None and not older_than >= 0:  # also refuses NaN
            raise ValueError(f"older_than must be seconds >= 0, not {older_than!r}")
        ids: list[str] | None = None
        if sessions is not None:
            ids = [sessions] if isinstance(sessions, str) else list(dict.fromkeys(sessions))
        self.check_open()
        if ids == [] or statuses == ():
            return PruneResult([], [])
        return await self._prune(
            None if older_than is None else float(older_than), ids, statuses, dry_run
        )

    # -- the published protocol ------------------------------------------------------------------
    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        self.check_open(session_id, step_name)
        row = await self._get(session_id, STEP, step_name)
        if row is None:
            return None
        value = decode_value(self.codec, row.data, session_id=session_id, step=step_name, kind=STEP)
        return JournalEntry(value, row.created_at)

    async def put_step(self, session_id: str, step_name: str, value: Any) -> None:
        self.check_open(session_id, step_name)
        data = encode_value(self.codec, value, session_id=session_id, step=step_name)
        await self.append([Record(session_id, STEP, step_name, data, time.time())])

    async def get_stream(self, session_id: str, step_name: str) -> list[Any] | None:
        self.check_open(session_id, step_name)
        row = await self._get(session_id, STREAM, step_name)
        if row is None:
            return None
        chunks: list[Any] = decode_value(
            self.codec, row.data, session_id=session_id, step=step_name, kind=STREAM
        )
        return chunks

    async def put_stream(self, session_id: str, step_name: str, chunks: list[Any]) -> None:
        self.check_open(session_id, step_name)
        data = encode_value(
            self.codec,
            list(chunks),
            session_id=session_id,
            step=step_name,
            what="stream chunks",
            kind=STREAM,
        )
        await self.append([Record(session_id, STREAM, step_name, data, time.time())])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class InMemoryJournalStore(NativeStore):
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

    async def _load(self, session_id: str) -> SessionJournal:
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

    async def _insert(
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

    async def _get(self, session_id: str, kind: int, key: str) -> Row | None:
        j = self._rows.get(session_id)
        if j is None:
            return None
        return (j.steps if kind == STEP else j.streams).get(key)

    async def _send_signal(
        self, session_id: str, name: str, data: bytes, created_at: float
    ) -> None:
        self._mailbox.setdefault((session_id, name), deque()).append(Row(data, created_at))

    async def _take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
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

    async def _claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        now = time.time()
        info = self._sessions.get(session_id)
        if info is None:
            info = SessionInfo(session_id, "running", owner, now + lease, now, now, 0)
        elif _claimable(info, owner, now):
            info = info._replace(
                status="running", owner=owner, lease_expires=now + lease, updated_at=now
            )
        self._sessions[session_id] = info
        return info

    async def _renew(self, session_id: str, owner: str, lease: float) -> bool:
        info = self._sessions.get(session_id)
        if info is None or info.owner != owner:
            return False
        now = time.time()
        self._sessions[session_id] = info._replace(lease_expires=now + lease, updated_at=now)
        return True

    async def _release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        info = self._sessions.get(session_id)
        if info is not None and info.owner == owner:
            self._sessions[session_id] = info._replace(
                status=status, owner=None, lease_expires=None, updated_at=time.time(), steps=steps
            )

    async def _list_sessions(self, status: str | None) -> list[SessionInfo]:
        rows = [i for i in self._sessions.values() if status is None or i.status == status]
        return sorted(rows, key=lambda i: i.created_at)

    async def _pending_signals(self, session_id: str) -> int:
        return sum(len(q) for (sid, _), q in self._mailbox.items() if sid == session_id)

    async def _pending_names(self, session_id: str) -> list[str]:
        return sorted(name for (sid, name) in self._mailbox if sid == session_id)

    async def _prune(
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
        result = _select_prunable(candidates, older_than, statuses, now)
        if not dry_run:
            for sid in result.pruned:
                self._rows.pop(sid, None)
                self._sessions.pop(sid, None)
                for key in [k for k in self._mailbox if k[0] == sid]:
                    del self._mailbox[key]
        return result

    def _take_signal_nowait(self, session_id: str, name: str) -> Row | None:
        queue = self._mailbox.get((session_id, name))
        if not queue:
            return None
        signal = queue.popleft()
        if not queue:
            del self._mailbox[(session_id, name)]
        return signal

    async def _close(self) -> None:
        pass


def _live(owner: str | None, lease_expires: float | None, now: float) -> bool:
    """A claim is live while it names an owner and its lease has not run out."""
    return owner is not None and lease_expires is not None and lease_expires >= now


def _select_prunable(
    candidates: Iterable[PruneCandidate],
    older_than: float | None,
    statuses: tuple[str, ...] | None,
    now: float,
) -> PruneResult:
    """Apply the prune filters (the id filter is the backend's) to ``candidates`` at ``now``."""
    pruned: list[str] = []
    skipped: list[str] = []
    for c in candidates:
        if statuses is not None and c.status not in statuses:
            continue
        if older_than is not None and not c.last_activity < now - older_than:
            continue
        (skipped if _live(c.owner, c.lease_expires, now) else pruned).append(c.session_id)
    return PruneResult(sorted(set(pruned)), sorted(set(skipped)))


def _claimable(info: SessionInfo, owner: str, now: float) -> bool:
    """A session may be claimed when nobody holds it, we do, or the holder's lease ran out."""
    return info.owner is None or info.owner == owner or (info.lease_expires or 0.0) < now

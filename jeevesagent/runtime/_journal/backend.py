"""The store-backend contract: the published five-method ``JournalStore`` protocol, and
``JournalBackend``, the public base class of complete stores (claims, leases, mailbox, sessions
table, bulk load, batched writes, prune) that ``JournaledRuntime`` is written against.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

from .._core.values import MAGIC, Codec, JournalCodec, decode_value, encode_value
from .._errors import SessionBusyError, StoreClosedError
from .commit import Fenced, GroupCommitter
from .rows import STEP, STREAM, Record, Row

__all__ = [
    "ENDED_STATUSES",
    "SESSION_STATUSES",
    "STEP",
    "Fenced",
    "SessionInfo",
    "STREAM",
    "JournalEntry",
    "JournalStore",
    "JournalBackend",
    "OpenedSession",
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
    workflow: str | None = None  # the registered workflow it runs; None: a plain session
    cancel_requested: bool = False  # rt.cancel() asked for it: it must never run again
    # A suspended ("waiting") session: the signal its body waits for (None: a sleep), and when
    # it must run again (a sleep's wake-up time, a wait's deadline; None: no deadline).
    waiting_for: str | None = None
    wake_at: float | None = None


# "pending": a workflow session made by ``start`` (or ``fork``), waiting for a worker.
# "waiting": a workflow session suspended while it waits for a signal or a timer.
# "imported": a session copied from a jeevesagent 0.9.7 journal by the schema migration; it has
# never run under this version (claiming it sets it to "running" like any other).
# "interrupted": the body was stopped by the application's own shutdown (a cancelled scope or
# task group, KeyboardInterrupt): resumable, and found by recovery like an orphan.
# "cancelled": stopped for good by ``cancel`` (final).
SESSION_STATUSES = (
    "pending",
    "running",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "interrupted",
    "imported",
)
#: The statuses of a session that has ended: it never runs again unless opened again by hand
#: (``completed`` or ``failed``), and never at all (``cancelled``).
ENDED_STATUSES = ("completed", "failed", "cancelled")


class PruneResult(NamedTuple):
    """What :meth:`JournalBackend.prune` did (or, with ``dry_run=True``, would do)."""

    pruned: list[str]  # sessions whose journal rows, mailbox and sessions row were deleted
    skipped: list[str]  # sessions that matched but were left alone because a live runtime owns them


@dataclass(slots=True)
class SessionJournal:
    """Everything recorded for one session, as loaded in one round trip."""

    steps: dict[str, Row]
    streams: dict[str, Row]
    #: ``False`` when the backend cannot list a session's rows (a five-method store): the
    #: runtime then asks :meth:`JournalBackend.read_row` for each key it does not find here.
    complete: bool = True


class OpenedSession(NamedTuple):
    """What :meth:`JournalBackend.open_session` found: the sessions row after the claim and, only
    if the claim was granted, the session's journal and the names of the signals waiting in its
    mailbox (sorted); ``None`` and ``[]`` when another owner holds the session."""

    info: SessionInfo
    journal: SessionJournal | None
    pending: list[str]


class JournalBackend(abc.ABC):
    """The store-backend contract: everything ``JournaledRuntime`` asks of a journal.

    Subclass it to write a complete store. A backend keeps three things per session, all keyed
    by session id: the **journal** (rows of kind :data:`STEP` or :data:`STREAM` under a journal
    key, each written once: first writer wins), the **mailbox** (signals waiting, FIFO per signal
    name) and a **sessions row** (:class:`SessionInfo`: status, owner, lease). Values reach a
    backend already encoded (``bytes``); the backend never decodes them.

    *Implement* the abstract methods. The five :class:`JournalStore` methods, ``load_session``,
    ``append`` (group commit), ``prune`` (argument checks) and ``aclose`` (idempotent) are built
    here on the hooks ``read_session``, ``write_rows``, ``read_row``, ``delete_sessions`` and
    ``close_resources``; the runtime calls the built methods, never the hooks. ``now``,
    ``watch`` and ``take_signal_nowait`` have working defaults for a local store, and so do the
    reads of operations tools, ``session_info`` and ``count_signed`` (override them to use an
    index or sample more widely).

    The rules every backend keeps (``jeevesagent.runtime.testing`` checks them):

    - a journal row is never replaced; a conflicting write reports the row already there;
    - fencing: a write or signal receipt on behalf of an ``owner`` changes nothing when the
      session's sessions row names another owner (or none) -- raise :class:`Fenced`;
    - a claim is granted when the session has no row, no owner, the same owner, or an expired
      lease, measured on the backend's own clock (:meth:`now`);
    - a signal is moved from the mailbox into the journal in one transaction: taken and
      journaled, or neither.
    """

    codec: JournalCodec
    _closed: bool = False

    def __init__(
        self, *, codec: str | Codec | None = None, signing_key: str | bytes | None = None
    ) -> None:
        self.codec = JournalCodec(codec, signing_key)
        self._closed = False
        self._committer = GroupCommitter(self.write_rows)

    # -- hooks: the primitives a backend implements ----------------------------------------------
    @abc.abstractmethod
    async def read_session(self, session_id: str) -> SessionJournal:
        """Every journal row of one session, in one round trip if the backend can. Called by
        :meth:`load_session`."""

    @abc.abstractmethod
    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        """Insert ``records`` in one transaction; first writer wins. Called by :meth:`append`.

        Returns the rows already present for keys that conflicted, keyed by
        ``(session_id, kind, key)``, so the caller can adopt the value recorded first. Fencing:
        if ``owners`` maps a session id to an owner token and that session's sessions row names
        another owner (or none), raise :class:`Fenced` with those session ids and insert nothing.
        """

    @abc.abstractmethod
    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        """One journal row, or ``None``. Called by ``get_step`` and ``get_stream``."""

    @abc.abstractmethod
    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        """In one write transaction: find the sessions matching every given filter (see
        :meth:`prune`; arguments already checked), leave those with a live claim alone, and
        unless ``dry_run`` delete the others' journal rows, mailbox and sessions row. Called by
        :meth:`prune`; :func:`select_prunable` applies the filters to candidates."""

    @abc.abstractmethod
    async def close_resources(self) -> None:
        """Release threads, connections and files. Called once, by :meth:`aclose`."""

    # -- the mailbox -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        """Append one (encoded) signal to the session's mailbox and commit; wake watchers."""

    @abc.abstractmethod
    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        """In one transaction, move the oldest mailbox signal of ``(session_id, name)`` into the
        journal as the STEP row ``key`` (value = its payload) and return that row; ``None`` if the
        queue is empty. If ``key`` is already journaled, return that row and take nothing. With
        ``key=None`` the signal is only removed from the mailbox (a receiver outside the session).
        Fencing as in :meth:`write_rows` (raise :class:`Fenced`, change nothing)."""

    @abc.abstractmethod
    async def pending_signals(self, session_id: str) -> int:
        """How many signals wait in the session's mailbox."""

    @abc.abstractmethod
    async def pending_names(self, session_id: str) -> list[str]:
        """The distinct names of the signals waiting in the session's mailbox, sorted."""

    def take_signal_nowait(self, session_id: str, name: str) -> Row | None:
        """Take a signal without I/O (no receipt), where the backend can; ``None`` otherwise
        (the default: a backend with I/O cannot)."""
        return None

    async def watch(self, wake: Callable[[str], None]) -> bool:
        """Ask to have ``wake(session_id)`` called (in the calling event loop's thread) whenever
        a signal is sent to a session by anyone, in any process. Returns ``False`` when the
        backend cannot push such notices now (then waiters poll; the default). Idempotent per
        ``wake``, and called before every wait, so a call for a ``wake`` already registered
        should cost no I/O; ended by ``aclose()``."""
        return False

    async def read_prefixed(self, session_id: str, kind: int, prefix: str) -> dict[str, Row]:
        """The session's journal rows of ``kind`` whose key starts with ``prefix`` (what
        ``read_stream`` polls). The default loads the whole session; a backend with an index on
        ``(session_id, kind, key)`` overrides it with a query of those rows alone."""
        journal = await self.read_session(session_id)
        rows = journal.steps if kind == STEP else journal.streams
        return {key: row for key, row in rows.items() if key.startswith(prefix)}

    async def watch_streams(self, wake: Callable[[str], None]) -> bool:
        """Like :meth:`watch`, for batches of stream chunks journaled (and sessions released):
        have ``wake(session_id)`` called when one is committed, by anyone. ``False`` (the
        default) when the backend cannot push such notices: ``read_stream`` polls."""
        return False

    # -- the sessions table: claims and leases ---------------------------------------------------
    @abc.abstractmethod
    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        """Atomically take the session for ``owner`` if it is free: no row, no owner, the same
        owner, or an expired lease (see :func:`claimable`). Sets status ``running`` and the
        lease, keeping ``workflow`` and ``cancel_requested``; returns the row as it is afterwards
        (compare ``.owner`` to know whether the claim was granted)."""

    @abc.abstractmethod
    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        """Extend the lease if ``owner`` still holds it; ``False`` if the claim was lost."""

    @abc.abstractmethod
    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        """Record how the session ended (``status``, ``steps`` journal rows) and drop the claim,
        only if ``owner`` holds it. Wakes the store's watchers of the session (someone may be
        waiting for its result)."""

    async def open_session(self, session_id: str, owner: str, lease: float) -> OpenedSession:
        """Open a session: :meth:`claim` it and, if granted, load its journal
        (:meth:`load_session`) and list the signal names waiting in its mailbox
        (:meth:`pending_names`). The default composes those three calls; a backend overrides it
        to do all of it in one round trip and one transaction (the bundled stores do), with the
        same results. If it raises, the claim may have been granted: the caller releases it."""
        self.check_open(session_id)
        info = await self.claim(session_id, owner, lease)
        if info.owner != owner:
            return OpenedSession(info, None, [])
        journal = await self.load_session(session_id)
        return OpenedSession(info, journal, await self.pending_names(session_id))

    async def release_lazy(self, session_id: str, owner: str, status: str, steps: int) -> None:
        """:meth:`release`, for a caller that need not wait until the change is durable: it is
        visible to every reader when this returns, but a crash of the store's host (not of this
        process) may undo it until the store's next durable commit -- the session then reads as
        still claimed by ``owner``, so a dead owner's takeover or its lease recovers it. The
        default is :meth:`release`; the bundled stores commit without waiting for an fsync."""
        await self.release(session_id, owner, status, steps)

    async def finish(
        self, session_id: str, owner: str, records: Sequence[Record], status: str, steps: int
    ) -> dict[tuple[str, int, str], Row]:
        """End a session that ``owner`` holds with its outcome, durably: commit ``records`` (first
        writer wins: returns the rows kept for keys that conflicted, as :meth:`append`) and
        :meth:`release` it as ``status`` with ``steps`` rows. Fenced as :meth:`write_rows` (raise
        :class:`Fenced`, change nothing). The default appends, then releases: two commits, and a
        reader may see the rows before the status; the SQLite and Postgres stores do both in one
        transaction (one fsync): no reader sees the status without the rows, or the rows with the
        old status."""
        try:
            conflicts = await self.append(records, {session_id: owner})
        except SessionBusyError as exc:
            raise Fenced({session_id}) from exc
        await self.release(session_id, owner, status, steps)
        return conflicts

    @abc.abstractmethod
    async def list_sessions(
        self,
        status: str | None = None,
        *,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        """Rows of the sessions table, oldest first (by ``created_at``, then id): all of them,
        or those of one ``status``, of the given ``workflows`` (names), at most ``limit``."""

    # -- workflows -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_session(
        self,
        session_id: str,
        workflow: str,
        arguments: Record,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> tuple[SessionInfo, Row | None]:
        """Make a workflow session, in one transaction, unless a sessions row exists already.

        A new session gets a sessions row naming ``workflow`` -- status ``pending`` with no
        owner, or, when ``owner`` is given, ``running`` and claimed by ``owner`` for ``lease``
        seconds -- and ``arguments`` (a STEP record of the session, its key
        :func:`~jeevesagent.runtime._core.keys.workflow_args_key`) is journaled, first writer
        wins. An existing session is left as it is. Returns the sessions row and the journaled
        arguments row as they are afterwards (``None``: an existing session made without
        arguments, e.g. a plain ``session()``). Wakes the store's watchers of the session (as
        :meth:`send_signal` does), so idle workers look for new work at once."""

    @abc.abstractmethod
    async def request_cancel(self, session_id: str) -> SessionInfo | None:
        """Cancel a session, in one transaction, and return its row afterwards (``None``: no
        such session).

        ``cancel_requested`` is set, and stays set: no claim clears it, so a runtime that claims
        the session later sees it and ends it ``cancelled`` without running it. A session with no
        live claim (pending, waiting, interrupted, imported, or running with an expired lease)
        also becomes ``cancelled`` at once, its owner cleared. A running one with a live claim
        keeps its status and owner: its owner stops it and releases it as ``cancelled``. An
        ended session (``completed``, ``failed``, ``cancelled``) is left unchanged. Wakes the
        store's watchers of the session (its owner may be watching)."""

    # -- suspension ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        """Suspend a workflow session that ``owner`` holds, in one transaction (see
        :func:`~jeevesagent.runtime._journal.rules.suspended`): status ``waiting``, the claim
        dropped, ``waiting_for`` (a signal name, ``None`` for a sleep) and ``wake_at`` (epoch
        seconds, ``None``: no deadline) recorded, ``steps`` journal rows; ``cancelled`` instead
        if a cancel was requested meanwhile. Returns the row afterwards; ``None`` (nothing
        changed) if ``owner`` does not hold the session. Wakes the store's watchers of it."""

    async def resumable(
        self, workflows: Sequence[str], limit: int | None = None
    ) -> list[SessionInfo]:
        """``waiting`` sessions of ``workflows`` to run again now, oldest first: a signal named
        ``waiting_for`` waits in the mailbox, or ``wake_at`` has passed on the store's clock.
        The default reads :meth:`list_sessions` and the mailbox; SQL stores do it in a query."""
        now = await self.now()
        found: list[SessionInfo] = []
        for info in await self.list_sessions("waiting", workflows=workflows):
            if (info.wake_at is not None and info.wake_at <= now) or (
                info.waiting_for is not None
                and info.waiting_for in await self.pending_names(info.session_id)
            ):
                found.append(info)
                if limit is not None and len(found) >= limit:
                    break
        return found

    async def wake_in(self, workflows: Sequence[str]) -> float | None:
        """Seconds until the earliest ``wake_at`` of the ``waiting`` sessions of ``workflows``,
        on the store's clock (``<= 0``: due now); ``None`` if none has one. A worker sleeps no
        longer than that."""
        now = await self.now()
        times = [
            i.wake_at
            for i in await self.list_sessions("waiting", workflows=workflows)
            if i.wake_at is not None
        ]
        return min(times) - now if times else None

    async def now(self) -> float:
        """The backend's clock, in epoch seconds: the one its leases are measured on (a database
        server's, for a store that many hosts share). The default is this machine's clock."""
        return time.time()

    # -- state -----------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def commits(self) -> int:
        """Write transactions issued by :meth:`append` so far (group commit shares one among
        concurrent callers): for tests and benchmarks."""
        return self._committer.commits

    # -- built on the hooks: what the runtime calls ----------------------------------------------
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
        return await self.read_session(session_id)

    async def load_row(self, session_id: str, kind: int, key: str) -> Row | None:
        """One journal row (for a store whose :meth:`load_session` is not complete)."""
        self.check_open(session_id, key)
        return await self.read_row(session_id, kind, key)

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

    # -- inspection: what operations tools (the CLI) read ----------------------------------------
    async def session_info(self, session_id: str) -> SessionInfo | None:
        """The session's row of the sessions table, or ``None`` (never claimed, or pruned). The
        default looks through :meth:`list_sessions`; a backend with an index overrides it."""
        self.check_open(session_id)
        return next((i for i in await self.list_sessions() if i.session_id == session_id), None)

    async def count_signed(self, session_id: str, sample: int = 100) -> tuple[int, int]:
        """How many rows of a sample of the journal are ``(signed, unsigned)``: every journal row
        of ``session_id``, plus, where the backend can, up to ``sample`` journal rows and
        ``sample`` waiting signals of any session. A journal in use is signed throughout or not
        at all (a store with a key refuses unsigned rows, one without refuses signed rows), so a
        sample tells which without scanning it. The default counts the session's rows."""
        journal = await self.load_session(session_id)
        rows = [*journal.steps.values(), *journal.streams.values()]
        signed = sum(row.data[: len(MAGIC)] == MAGIC for row in rows)
        return signed, len(rows) - signed

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
        return await self.delete_sessions(
            None if older_than is None else float(older_than), ids, statuses, dry_run
        )

    # -- the published protocol ------------------------------------------------------------------
    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        self.check_open(session_id, step_name)
        row = await self.read_row(session_id, STEP, step_name)
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
        row = await self.read_row(session_id, STREAM, step_name)
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
        await self.close_resources()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

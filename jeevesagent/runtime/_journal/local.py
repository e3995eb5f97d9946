"""A sessions table and a mailbox held in this process's memory: the in-memory store keeps all
its state in them, and the five-method store adapter keeps what its wrapped store cannot.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import anyio

from .._core.values import Codec
from .backend import JournalBackend, SessionInfo
from .rows import STEP, Record, Row
from .rules import cancel_requested, check_fence, claimed, created, holds, suspended

__all__ = ["LocalBackend", "LocalMailbox", "LocalSessions"]


class LocalSessions:
    """Sessions rows (claims, leases, how each session ended), by session id."""

    def __init__(self) -> None:
        self.rows: dict[str, SessionInfo] = {}

    def fence(self, owners: Mapping[str, str] | None) -> None:
        """Raise :class:`Fenced` for the sessions whose claim ``owners`` does not hold."""
        check_fence(owners, self._owner_of)

    def _owner_of(self, session_id: str) -> str | None:
        info = self.rows.get(session_id)
        return None if info is None else info.owner

    def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        info = claimed(self.rows.get(session_id), session_id, owner, lease, time.time())
        self.rows[session_id] = info
        return info

    def renew(self, session_id: str, owner: str, lease: float) -> bool:
        info = self.rows.get(session_id)
        if info is None or not holds(info, owner):
            return False
        now = time.time()
        self.rows[session_id] = info._replace(lease_expires=now + lease, updated_at=now)
        return True

    def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        info = self.rows.get(session_id)
        if info is not None and holds(info, owner):
            self.rows[session_id] = info._replace(
                status=status, owner=None, lease_expires=None, updated_at=time.time(), steps=steps
            )

    def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        """See :meth:`JournalBackend.suspend`."""
        info = suspended(self.rows.get(session_id), owner, waiting_for, wake_at, steps, time.time())
        if info is not None:
            self.rows[session_id] = info
        return info

    def list(
        self,
        status: str | None = None,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        rows = [
            i
            for i in self.rows.values()
            if (status is None or i.status == status)
            and (workflows is None or i.workflow in workflows)
        ]
        rows.sort(key=lambda i: (i.created_at, i.session_id))
        return rows if limit is None else rows[:limit]

    def create(
        self, session_id: str, workflow: str, owner: str | None, lease: float
    ) -> SessionInfo:
        """The sessions row of a new workflow session (kept if one exists already)."""
        return self.rows.setdefault(
            session_id, created(session_id, workflow, owner, lease, time.time())
        )

    def request_cancel(self, session_id: str) -> SessionInfo | None:
        """See :meth:`JournalBackend.request_cancel`."""
        info = self.rows.get(session_id)
        if info is not None:
            info = self.rows[session_id] = cancel_requested(info, time.time())
        return info


class LocalMailbox:
    """Signals waiting, FIFO per ``(session id, signal name)``, as encoded rows."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], deque[Row]] = {}

    def put(self, session_id: str, name: str, row: Row) -> None:
        self.queues.setdefault((session_id, name), deque()).append(row)

    def put_back(self, session_id: str, name: str, row: Row) -> None:
        """Return a signal taken with :meth:`pop` to the head of its queue."""
        self.queues.setdefault((session_id, name), deque()).appendleft(row)

    def peek(self, session_id: str, name: str) -> Row | None:
        queue = self.queues.get((session_id, name))
        return queue[0] if queue else None

    def pop(self, session_id: str, name: str) -> Row | None:
        queue = self.queues.get((session_id, name))
        if not queue:
            return None
        signal = queue.popleft()
        if not queue:
            del self.queues[(session_id, name)]
        return signal

    def pending(self, session_id: str) -> int:
        return sum(len(q) for (sid, _), q in self.queues.items() if sid == session_id)

    def names(self, session_id: str) -> list[str]:
        return sorted(name for (sid, name) in self.queues if sid == session_id)

    def drop(self, session_id: str) -> None:
        for key in [k for k in self.queues if k[0] == session_id]:
            del self.queues[key]


class LocalBackend(JournalBackend):
    """The part of a :class:`JournalBackend` whose sessions table and mailbox live in this
    process (the in-memory store, the five-method store adapter): claims, leases, sending and
    counting signals, and pushed wake-ups (every signal comes through :meth:`send_signal`).
    Subclasses keep the journal and implement ``take_signal`` (which journals a receipt)."""

    def __init__(
        self, *, codec: str | Codec | None = None, signing_key: str | bytes | None = None
    ) -> None:
        super().__init__(codec=codec, signing_key=signing_key)
        self._sessions = LocalSessions()
        self._mailbox = LocalMailbox()
        self._watchers: list[Callable[[str], None]] = []
        self._creating: anyio.Lock | None = None  # made in the event loop, on first use

    def _wake(self, session_id: str) -> None:
        for wake in list(self._watchers):
            wake(session_id)

    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        self.check_open(session_id, name)
        self._mailbox.put(session_id, name, Row(data, created_at))
        self._wake(session_id)

    def take_signal_nowait(self, session_id: str, name: str) -> Row | None:
        return self._mailbox.pop(session_id, name)

    async def pending_signals(self, session_id: str) -> int:
        self.check_open(session_id)
        return self._mailbox.pending(session_id)

    async def pending_names(self, session_id: str) -> list[str]:
        self.check_open(session_id)
        return self._mailbox.names(session_id)

    async def watch(self, wake: Callable[[str], None]) -> bool:
        if wake not in self._watchers:
            self._watchers.append(wake)
        return True

    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        self.check_open(session_id)
        return self._sessions.claim(session_id, owner, lease)

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        self.check_open(session_id)
        return self._sessions.renew(session_id, owner, lease)

    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        self.check_open(session_id)
        self._sessions.release(session_id, owner, status, steps)
        self._wake(session_id)

    async def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        self.check_open(session_id)
        info = self._sessions.suspend(session_id, owner, waiting_for, wake_at, steps)
        self._wake(session_id)
        return info

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        self.check_open()
        return self._sessions.list(status, workflows, limit)

    async def create_session(
        self,
        session_id: str,
        workflow: str,
        arguments: Record,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> tuple[SessionInfo, Row | None]:
        self.check_open(session_id, arguments.key)
        if self._creating is None:
            self._creating = anyio.Lock()
        # One creator at a time: writing the arguments may yield (a five-method store), and the
        # arguments and the sessions row must come from the same creator.
        async with self._creating:
            info = self._sessions.rows.get(session_id)
            if info is None:
                # The arguments first: a session row is never seen without them.
                await self.write_rows([arguments])
                info = self._sessions.create(session_id, workflow, owner, lease)
                self._wake(session_id)
        return info, await self.read_row(session_id, STEP, arguments.key)

    async def request_cancel(self, session_id: str) -> SessionInfo | None:
        self.check_open(session_id)
        info = self._sessions.request_cancel(session_id)
        if info is not None:
            self._wake(session_id)
        return info

    async def close_resources(self) -> None:
        self._watchers.clear()

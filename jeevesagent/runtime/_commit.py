"""Group commit: concurrent writers share one transaction, with no background task.

Every ``append`` joins a FIFO queue. If nobody is writing, the caller becomes the *leader*: it
takes everything queued (its own records and whatever other sessions queued meanwhile), commits it
in one transaction, and wakes the waiters of that batch. If records arrived while it was
committing, it hands leadership to the first of them and returns -- a leader never commits other
callers' later batches on its own time. Followers simply wait for their batch.

So there is exactly one writer per store at any moment, batches commit in queue order (the records
of one session stay in order, and the journal is always a prefix of what was queued), and each
caller returns when its own records are committed. Nothing outlives the callers: the "writer" is
always one of them, which keeps this compatible with structured concurrency.

Waiting and committing are shielded from cancellation: a record handed to the queue may be
committed by another caller at any time, so its own caller must stay to learn the outcome.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from ._errors import StoreError

if TYPE_CHECKING:
    from ._store import Record, Row

__all__ = ["GroupCommitter"]

Key = tuple[str, int, str]

# Upper bound of records per transaction: keeps a burst from building one huge transaction.
MAX_BATCH = 1000


class _Ticket:
    __slots__ = ("conflicts", "done", "error", "lead", "records")

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records
        self.done = anyio.Event()
        self.lead = False
        self.conflicts: dict[Key, Row] = {}
        self.error: BaseException | None = None


class GroupCommitter:
    """Serializes and batches ``insert(records)`` calls made by concurrent tasks."""

    def __init__(self, insert: Callable[[list[Record]], Awaitable[dict[Key, Row]]]) -> None:
        self._insert = insert
        self._queue: deque[_Ticket] = deque()
        self._writing = False
        self.commits = 0  # transactions issued (for tests and benchmarks)

    def __repr__(self) -> str:
        return f"<GroupCommitter queued={len(self._queue)} commits={self.commits}>"

    async def commit(self, records: Sequence[Record]) -> dict[Key, Row]:
        """Queue ``records`` and return once they are committed (or raise why they were not)."""
        ticket = _Ticket(records)
        self._queue.append(ticket)
        with anyio.CancelScope(shield=True):
            if self._writing:
                await ticket.done.wait()
            else:
                ticket.lead = True
            if ticket.lead:
                await self._lead()
        if ticket.error is not None:
            raise ticket.error
        return ticket.conflicts

    async def _lead(self) -> None:
        self._writing = True
        batch: list[_Ticket] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].records) <= MAX_BATCH):
            ticket = self._queue.popleft()
            batch.append(ticket)
            count += len(ticket.records)
        try:
            conflicts = await self._insert([r for t in batch for r in t.records])
            self.commits += 1
        except BaseException as exc:
            self._fail(batch, exc)
        else:
            if conflicts:
                for t in batch:
                    keys = {(r.session_id, r.kind, r.key) for r in t.records}
                    t.conflicts = {k: v for k, v in conflicts.items() if k in keys}
        finally:
            for t in batch:
                if t.lead:
                    continue
                t.done.set()
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.done.set()
            else:
                self._writing = False

    @staticmethod
    def _fail(batch: list[_Ticket], exc: BaseException) -> None:
        # The leader raises the original; every other caller gets its own exception Record (one
        # exception raised in several tasks would share and corrupt its traceback).
        for t in batch:
            if t.lead:
                t.error = exc
            elif isinstance(exc, Exception):
                first = t.records[0] if t.records else None
                t.error = StoreError(
                    f"the transaction that carried this record failed: {exc}",
                    session_id=first.session_id if first else None,
                    step=first.key if first else None,
                )
                t.error.__cause__ = exc
            else:
                t.error = exc

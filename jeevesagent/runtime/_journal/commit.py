"""Group commit: concurrent writers share one transaction, with no background task.

Every ``append`` joins a FIFO queue of batches. If nobody is writing, the caller becomes the
*leader* of a batch of its own and commits it at once. Otherwise it joins the last batch waiting
for its turn (up to :data:`MAX_BATCH` records), or opens a new one that it will lead. When a
leader's transaction is done it wakes its batch (one event for all of it) and hands the turn to
the next batch's leader -- a leader never commits other callers' later batches on its own time.
Callers that arrive before that leader starts still join its batch. If a batch fails,
each caller's records are committed again on their own, so one caller's bad record fails only
that caller (and the later records of its session), never other sessions.

So there is exactly one writer per store at any moment, batches commit in queue order (the records
of one session stay in order, and the journal is always a prefix of what was queued), and each
caller returns when its own records are committed. Nothing outlives the callers: the "writer" is
always one of them, which keeps this compatible with structured concurrency.

Waiting and committing are shielded from cancellation: a record handed to the queue may be
committed by another caller at any time, so its own caller must stay to learn the outcome. A
waiting caller enters a shielded cancel scope only once a cancellation has reached it (see
:func:`_wait_for`). A leader commits inside one, except when the backend's class that defines
``write_rows`` also sets ``write_rows_shielded = True``: its ``write_rows``, once called, runs to
its outcome whatever happens to the caller (it shields its own waits, or never waits). The
built-in stores do; any other backend gets the scope. An anyio cancel scope costs more than a
third of a recorded step's CPU on the event loop, so neither path pays one when nothing is
cancelled.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from .._core.keys import describe_key
from .._errors import SessionBusyError, StoreError
from .rows import Record, Row


class Fenced(Exception):
    """Raised by a store's insert when a session's claim belongs to another runtime."""

    def __init__(self, session_ids: set[str]) -> None:
        super().__init__(sorted(session_ids))
        self.session_ids = session_ids


__all__ = ["GroupCommitter"]

Key = tuple[str, int, str]

# Upper bound of records per transaction: keeps a burst from building one huge transaction.
MAX_BATCH = 1000


class _Ticket:
    __slots__ = ("conflicts", "error", "lead", "owners", "records")

    def __init__(self, records: Sequence[Record], owners: Mapping[str, str] | None) -> None:
        self.records = records
        self.owners = owners
        self.lead = False
        self.conflicts: dict[Key, Row] = {}
        self.error: BaseException | None = None


class _Batch:
    """The callers that share one transaction. Its first caller leads it (commits it) when its
    ``turn`` comes; the others wait for ``done``. Two events per batch, none per caller."""

    __slots__ = ("count", "done", "tickets", "turn")

    def __init__(self, first: _Ticket) -> None:
        first.lead = True
        self.tickets = [first]
        self.count = len(first.records)
        self.done: anyio.Event | None = None  # made by the first follower
        self.turn: anyio.Event | None = None  # made when the batch has to queue


class GroupCommitter:
    """Serializes and batches ``insert(records)`` calls made by concurrent tasks."""

    def __init__(
        self,
        insert: Callable[[list[Record], Mapping[str, str] | None], Awaitable[dict[Key, Row]]],
    ) -> None:
        self._insert = insert
        self._shielded = _shields_itself(insert)
        self._queue: deque[_Batch] = deque()  # batches waiting for their turn, in order
        self._writing = False
        self.commits = 0  # transactions issued (for tests and benchmarks)

    def __repr__(self) -> str:
        return f"<GroupCommitter queued={len(self._queue)} commits={self.commits}>"

    async def commit(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[Key, Row]:
        """Queue ``records`` and return once they are committed (or raise why they were not).

        ``owners`` (session id -> owner token) asks the store to fence: records of a session
        whose claim another runtime holds are refused with :class:`SessionBusyError`.
        """
        ticket = _Ticket(records, owners)
        pending: BaseException | None = None  # a cancellation to deliver once done
        if not self._writing:
            self._writing = True  # nobody is writing: lead a batch of our own, now
            await self._lead_shielded(_Batch(ticket))
        else:
            last = self._queue[-1] if self._queue else None
            if last is not None and last.count + len(records) <= MAX_BATCH:
                last.tickets.append(ticket)  # join the batch waiting for its turn
                last.count += len(records)
                if last.done is None:
                    last.done = anyio.Event()
                pending = await _wait_for(last.done)
            else:
                batch = _Batch(ticket)
                batch.turn = anyio.Event()
                self._queue.append(batch)
                pending = await _wait_for(batch.turn)
                await self._lead_shielded(batch)  # the batch's callers wait on us: lead it
        if pending is not None:
            raise pending
        if ticket.error is not None:
            raise ticket.error
        return ticket.conflicts

    async def _lead_shielded(self, batch: _Batch) -> None:
        if self._shielded:  # the store's write runs to its outcome by itself
            await self._lead(batch)
        else:
            with anyio.CancelScope(shield=True):
                await self._lead(batch)

    async def _lead(self, batch: _Batch) -> None:
        if self._queue and self._queue[0] is batch:
            self._queue.popleft()  # from now on nobody joins it
        try:
            await self._commit_batch(batch.tickets)
        except BaseException as exc:
            self._fail(batch.tickets, exc)
        finally:
            if batch.done is not None:
                batch.done.set()
            if self._queue:
                successor = self._queue[0]
                assert successor.turn is not None
                successor.turn.set()  # it pops itself when it starts: late callers still join
            else:
                self._writing = False

    async def _commit_batch(self, batch: list[_Ticket]) -> None:
        while batch:
            owners: dict[str, str] = {}
            for t in batch:
                if t.owners:
                    owners.update(t.owners)
            try:
                conflicts = await self._insert(
                    [r for t in batch for r in t.records], owners or None
                )
            except Fenced as fenced:
                # Refuse the fenced sessions' records; commit the others without them.
                kept = []
                for t in batch:
                    lost = t.owners and fenced.session_ids & set(t.owners)
                    if lost:
                        sid = sorted(lost)[0]
                        t.error = SessionBusyError(
                            f"session {sid!r}: this runtime no longer holds the session (its "
                            "claim expired and another runtime took it over), so its records "
                            "were refused. The other owner's journal stands; do not retry here.",
                            session_id=sid,
                            step=describe_key(t.records[0].key) if t.records else None,
                        )
                    else:
                        kept.append(t)
                batch = kept
                continue
            except Exception:
                if len(batch) == 1:
                    raise
                # One caller's bad record must not fail the others' (their functions have run,
                # and their sessions are fine): commit each caller's records on its own, so a
                # failure reaches only the callers whose transaction failed.
                # A session whose record failed commits nothing after it: its journal stays a
                # prefix of what it queued.
                failed: set[str] = set()
                for t in batch:
                    sessions = {r.session_id for r in t.records}
                    if sessions & failed:
                        t.error = _after_failure(t, sorted(sessions & failed)[0])
                        continue
                    try:
                        await self._commit_batch([t])
                    except Exception as exc:
                        t.error = exc
                        failed |= sessions
                return
            self.commits += 1
            if conflicts:
                for t in batch:
                    keys = {(r.session_id, r.kind, r.key) for r in t.records}
                    t.conflicts = {k: v for k, v in conflicts.items() if k in keys}
            return

    @staticmethod
    def _fail(batch: list[_Ticket], exc: BaseException) -> None:
        # The leader raises the original; every other caller gets its own exception Record (one
        # exception raised in several tasks would share and corrupt its traceback).
        for t in batch:
            if t.error is not None:
                continue
            if t.lead:
                t.error = exc
            elif isinstance(exc, Exception):
                first = t.records[0] if t.records else None
                t.error = StoreError(
                    f"the transaction that carried this record failed: {exc}",
                    session_id=first.session_id if first else None,
                    step=describe_key(first.key) if first else None,
                )
                t.error.__cause__ = exc
            else:
                t.error = exc


async def _wait_for(event: anyio.Event) -> BaseException | None:
    """Wait until ``event`` is set, whatever cancellation arrives meanwhile (a batch's outcome, or
    its turn, concerns records its caller handed over and other callers' records too); return a
    cancellation still to deliver, if any.

    The shielded cancel scope is entered only once a cancellation has arrived: one around every
    wait cost ~30k instructions per step of 50 concurrent sessions (``python
    benchmarks/instructions.py --workload concurrent``), ~15% of the round. A cancellation by an
    anyio or trio cancel scope is level-triggered (documented: it comes again at the caller's next
    checkpoint, just as after a shielded wait), which ``current_effective_deadline()`` being
    ``-inf`` tells, so this one instance is not kept. Any other (asyncio's own ``Task.cancel()``,
    edge-triggered) would be lost: it is returned, for the caller to raise once done.
    """
    try:
        await event.wait()
        return None
    except anyio.get_cancelled_exc_class() as exc:
        with anyio.CancelScope(shield=True):
            await event.wait()
        if anyio.current_effective_deadline() == -math.inf:
            return None  # still cancelled: it is raised again at the next checkpoint
        return exc


def _shields_itself(insert: Callable[..., Any]) -> bool:
    """Whether ``insert`` is a backend's ``write_rows`` declared cancel-proof by the very class
    that defines it (a subclass that overrides ``write_rows`` must declare it again)."""
    backend = getattr(insert, "__self__", None)
    for cls in type(backend).__mro__ if backend is not None else ():
        if "write_rows" in vars(cls):
            return vars(cls).get("write_rows_shielded", False) is True
    return False


def _after_failure(ticket: _Ticket, session_id: str) -> StoreError:
    first = ticket.records[0] if ticket.records else None
    return StoreError(
        f"session {session_id!r}: an earlier record of this session failed to commit in the same "
        "group commit, so this one was not committed either (the journal keeps no gap). Open "
        "the session again to resume from what was committed.",
        session_id=session_id,
        step=describe_key(first.key) if first else None,
    )

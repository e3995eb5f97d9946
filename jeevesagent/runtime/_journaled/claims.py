"""The claim lifecycle of a journaled runtime's sessions (bundled stores): taking a session's
claim together with its journal and mailbox (one round trip: ``open_session``) -- waiting for it,
or ending the claim of an owner whose process is gone -- renewing its lease while the session is
open, and releasing it with the status the session ended with (lazily, where nothing relies on
the status surviving a crash of the store's host: see :func:`durable_release`) -- for a workflow
that ended with an outcome, together with that outcome, in one durable commit (``finish``).

A :class:`ClaimHolder` belongs to one runtime (one owner token); the runtime composes it and
calls it, holding the per-session bookkeeping itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from .._core import observe as _observe
from .._errors import SessionBusyError, StoreClosedError, StoreError, Suspension
from .._journal.backend import STEP, Fenced, JournalBackend, OpenedSession, Record, Row, SessionInfo
from .._journal.owner import owner_is_dead
from .state import JournaledState

__all__ = ["ClaimHolder", "durable_release", "orphaned", "session_status", "suspension_of"]


async def orphaned(
    backend: JournalBackend,
    workflows: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[SessionInfo]:
    """Sessions to resume, oldest first: ``interrupted`` ones, and ``running`` ones whose owner
    is gone (lease expired on the store's clock, or its process on this host, in this pid
    namespace, no longer exists) -- of ``workflows`` only, when given."""
    # Leases are measured on the store's clock, never this worker's (it may run ahead). Read
    # before the list: a lease renewed in between only lies further past `now`.
    now = await backend.now()
    more = None if limit is None else limit + 16
    running = [
        info
        for info in await backend.list_sessions("running", workflows=workflows, limit=more)
        if info.owner is None
        or (info.lease_expires is not None and info.lease_expires < now)
        or owner_is_dead(info.owner)
    ]
    interrupted = await backend.list_sessions("interrupted", workflows=workflows, limit=limit)
    found = sorted(running + interrupted, key=lambda i: (i.created_at, i.session_id))
    return found if limit is None else found[:limit]


def suspension_of(exc: BaseException | None) -> Suspension | None:
    """The :class:`Suspension` that ``exc`` is, or that a group of nothing else (cancellations
    of its siblings aside) holds: the body was suspended. ``None`` otherwise."""
    if isinstance(exc, Suspension):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found, rest = exc.split(Suspension)
        others = None if rest is None else rest.split(anyio.get_cancelled_exc_class())[1]
        if found is not None and others is None:
            first = found.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first if isinstance(first, Suspension) else None
    return None


def session_status(exc: BaseException | None) -> str:
    """How a session ended, as the sessions table records it.

    ``interrupted``: the body was stopped by the application itself -- a cancelled scope or task
    group, ``KeyboardInterrupt``, ``SystemExit`` -- so the session is resumable and recovery
    finds it. ``failed``: the body raised.
    """
    if exc is None:
        return "completed"
    stopped = (anyio.get_cancelled_exc_class(), KeyboardInterrupt, SystemExit)
    if isinstance(exc, BaseExceptionGroup):
        return "interrupted" if exc.split(stopped)[1] is None else "failed"
    return "interrupted" if isinstance(exc, stopped) else "failed"


def durable_release(workflow: str | None, status: str) -> bool:
    """Whether ending a session as ``status`` must be durable before the caller goes on.

    A release is written lazily (visible to every process at once, durable with the store's next
    durable commit: no fsync of its own) unless others rely on it surviving a crash of the
    store's host: a workflow session that ended ``completed`` or ``failed`` -- ``result()`` from
    any process returns its outcome, and no worker may run it again. Were such a release lost,
    the session would read ``running`` under a dead owner, and a worker would resume it (a
    failed body would run again). Every other release may be lost safely: a session left
    ``running`` by a dead owner is recovered at once on the same host (:func:`owner_is_dead`)
    and when its lease expires elsewhere -- ``interrupted`` and plain sessions are resumed as
    they would have been, and a cancelled one is ended ``cancelled`` again by its next claim
    (the cancel request itself is durable). A process crash (SIGKILL) loses no release: it was
    handed to the store before the session's context returned.
    """
    return workflow is not None and status in ("completed", "failed")


class ClaimHolder:
    """Takes, renews and releases session claims in ``native`` as owner ``owner_id``."""

    def __init__(
        self, native: JournalBackend, owner_id: str, lease: float, poll_interval: float
    ) -> None:
        self.native = native
        self.owner_id = owner_id
        self.lease = lease
        self.poll_interval = poll_interval

    async def take(self, session_id: str, wait: float | None) -> tuple[float, OpenedSession]:
        """Take the session's claim, or raise SessionBusyError (after ``wait`` seconds).
        Returns the time (``anyio.current_time()``) just before the claim that was granted, and
        what the store's ``open_session`` found: the sessions row as the claim left it, the
        session's journal and the names of the signals waiting for it -- one round trip."""
        native = self.native
        deadline = None if wait is None else anyio.current_time() + wait
        while True:
            sent = anyio.current_time()
            opened = await native.open_session(session_id, self.owner_id, self.lease)
            info = opened.info
            if info.owner == self.owner_id:
                return sent, opened
            if info.owner is not None and owner_is_dead(info.owner):
                # Its process is gone (same host): end its claim now instead of waiting. As
                # "interrupted", never "failed": until our claim below lands, others read this
                # status -- result() must not see an ended session, and a worker must still
                # resume it if we do not get there. Lazily: lost, it is the dead owner's again.
                await native.release_lazy(session_id, info.owner, "interrupted", info.steps)
                _observe.claim_taken_over(session_id, info.owner)
                continue
            now = anyio.current_time()
            if deadline is None or now >= deadline:
                until = (
                    f" until {time.strftime('%H:%M:%S', time.localtime(info.lease_expires))}"
                    if info.lease_expires
                    else ""
                )
                raise SessionBusyError(
                    f"session {session_id!r} is running in another runtime ({info.owner}, claim "
                    f"held{until}). Open it with session({session_id!r}, wait=seconds) to wait "
                    "for it, or run it where it is owned.",
                    session_id=session_id,
                )
            await anyio.sleep(min(self.poll_interval, deadline - now))

    async def release(
        self, session_id: str, status: str, rows: int, workflow: str | None = None
    ) -> None:
        """End the claim, recording ``status`` -- durably for a workflow's outcome, lazily
        otherwise (see :func:`durable_release`). A store error is logged, not raised: the claim
        then expires on its own when its lease runs out."""
        native = self.native
        if native.closed:
            return
        try:
            if durable_release(workflow, status):
                await native.release(session_id, self.owner_id, status, rows)
            else:
                await native.release_lazy(session_id, self.owner_id, status, rows)
        except StoreError as error:
            _observe.release_failed(session_id, error)

    async def finish(self, state: JournaledState, outcome: list[Record], status: str) -> None:
        """End the claim of a workflow session with its ``outcome`` (its ``w:result`` or
        ``w:failure:N`` record), recording ``status``: the outcome, the records still buffered
        and the status commit in one durable transaction (:meth:`JournalBackend.finish`), so the
        caller waits for one fsync, and no reader sees the status without the outcome.

        Raises if that fails (the outcome was not recorded): :class:`SessionBusyError` if the
        claim was lost (nothing was written). Otherwise the session is released ``interrupted``
        if the claim is still ours, lazily and fenced -- resumable at once, and a finish that
        did commit after all is left alone (the claim is no longer ours)."""
        records, state.buffer = [*state.buffer, *outcome], []
        tables = (state.steps, state.streams)
        rows = len(state.steps) + len(state.streams)
        rows += sum(1 for r in outcome if r.key not in tables[r.kind != STEP])
        try:
            conflicts = await self.native.finish(state.id, self.owner_id, records, status, rows)
        except Fenced as exc:
            raise SessionBusyError(
                f"session {state.id!r}: this runtime no longer holds the session (its claim "
                "expired and another runtime took it over), so its outcome was not recorded "
                "here. The other owner's journal stands.",
                session_id=state.id,
            ) from exc
        except BaseException:
            await self.release(state.id, "interrupted", rows)
            raise
        for r in outcome:
            tables[r.kind != STEP].setdefault(r.key, Row(r.data, r.created_at))
        state.adopt(conflicts)

    async def suspend(
        self, session_id: str, waiting_for: str | None, wake_at: float | None, rows: int
    ) -> None:
        """End the claim of a suspended session, recording it ``waiting`` (see
        :meth:`JournalBackend.suspend`). A store error is logged, not raised, as in
        :meth:`release`: the claim then expires and a worker resumes the session."""
        if self.native.closed:
            return
        try:
            await self.native.suspend(session_id, self.owner_id, waiting_for, wake_at, rows)
        except StoreError as error:
            _observe.release_failed(session_id, error)

    async def renew(
        self,
        session_id: str,
        claimed_at: float,
        held: Callable[[], bool],
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """Renew the claim every ``lease / 3`` while ``held()``; returns when it is not (or the
        store closed). A renewal that fails on a store error (a transient database or network
        failure) is retried every second or so, as long as the lease would still hold; raises
        only when the claim is known lost (another runtime took it) or the lease ran out without
        a renewal. Waits with ``sleep`` (the session's alarm's, which does more meanwhile)."""
        native = self.native
        retry = min(1.0, self.lease / 10)
        renewed_at = claimed_at
        wait = self.lease / 3
        while True:
            await sleep(wait)
            if native.closed or not held():
                return  # the runtime is closing: it releases the claim
            sent = anyio.current_time()
            try:
                still_ours = await native.renew(session_id, self.owner_id, self.lease)
            except StoreClosedError:
                return
            except StoreError as exc:
                if anyio.current_time() + retry >= renewed_at + self.lease:
                    raise StoreError(
                        f"session {session_id!r}: the claim on the session could not be "
                        f"renewed for {self.lease} s (its lease) because the store failed "
                        f"({exc}); another runtime may take the session over now, so it "
                        "was stopped here. Open it again once the store is reachable.",
                        session_id=session_id,
                    ) from exc
                _observe.claim_renewal_retried(session_id, exc)
                wait = retry
                continue
            if not still_ours:
                raise SessionBusyError(
                    f"session {session_id!r}: this runtime lost its claim on the session (the "
                    "lease expired and another runtime took it over); it was stopped here.",
                    session_id=session_id,
                )
            renewed_at = sent
            wait = self.lease / 3

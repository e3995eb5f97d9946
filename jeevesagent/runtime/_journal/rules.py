"""The rules of claims, fencing and pruning that every backend applies the same way: when a
claim is live, when a session may be claimed and what the claim makes of its row, which writes
are fenced, and which prune candidates are deleted or skipped. The in-memory store and the SQLite
store (which decides claims and fences in Python, inside its write transaction) call these; the
Postgres store states the same rules in its statements; the conformance suite checks that they
agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from .backend import ENDED_STATUSES, PruneResult, SessionInfo
from .commit import Fenced

__all__ = [
    "PruneCandidate",
    "cancel_requested",
    "check_fence",
    "claimable",
    "claimed",
    "created",
    "holds",
    "live_claim",
    "select_prunable",
    "suspended",
]


class PruneCandidate(NamedTuple):
    """A session as the prune filters see it: backends list them, ``select_prunable`` decides."""

    session_id: str
    status: str | None  # None: the session has journal or mailbox rows but no sessions row
    owner: str | None
    lease_expires: float | None
    last_activity: float  # sessions.updated_at, else the newest created_at of its rows


def live_claim(owner: str | None, lease_expires: float | None, now: float) -> bool:
    """A claim is live while it names an owner and its lease has not run out."""
    return owner is not None and lease_expires is not None and lease_expires >= now


def select_prunable(
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
        (skipped if live_claim(c.owner, c.lease_expires, now) else pruned).append(c.session_id)
    return PruneResult(sorted(set(pruned)), sorted(set(skipped)))


def claimable(info: SessionInfo, owner: str, now: float) -> bool:
    """A session may be claimed when nobody holds it, we do, or the holder's lease ran out."""
    return info.owner is None or info.owner == owner or (info.lease_expires or 0.0) < now


def claimed(
    info: SessionInfo | None, session_id: str, owner: str, lease: float, now: float
) -> SessionInfo:
    """The sessions row after ``owner`` asks for the session at ``now``: a new ``running`` row
    (no row yet), the row taken over (:func:`claimable`), or ``info`` unchanged (held by another:
    the claim is refused, and the caller sees who holds it)."""
    if info is None:
        return SessionInfo(session_id, "running", owner, now + lease, now, now, 0)
    if claimable(info, owner, now):
        return info._replace(
            status="running",
            owner=owner,
            lease_expires=now + lease,
            updated_at=now,
            waiting_for=None,
            wake_at=None,
        )
    return info


def suspended(
    info: SessionInfo | None,
    owner: str,
    waiting_for: str | None,
    wake_at: float | None,
    steps: int,
    now: float,
) -> SessionInfo | None:
    """The sessions row after ``owner`` suspends the session at ``now``: ``waiting`` for
    ``waiting_for`` (a signal; ``None``: a sleep) until ``wake_at``, its claim dropped --
    ``cancelled`` if a cancel was requested meanwhile; ``None`` (unchanged) unless ``owner``
    holds it."""
    if not holds(info, owner):
        return None
    assert info is not None
    status = "cancelled" if info.cancel_requested else "waiting"
    return info._replace(
        status=status,
        owner=None,
        lease_expires=None,
        updated_at=now,
        steps=steps,
        waiting_for=waiting_for if status == "waiting" else None,
        wake_at=wake_at if status == "waiting" else None,
    )


def created(
    session_id: str, workflow: str, owner: str | None, lease: float, now: float
) -> SessionInfo:
    """The sessions row of a new workflow session made at ``now``: ``pending`` with no owner,
    or ``running`` and claimed by ``owner`` for ``lease`` seconds."""
    if owner is None:
        return SessionInfo(session_id, "pending", None, None, now, now, 0, workflow)
    return SessionInfo(session_id, "running", owner, now + lease, now, now, 0, workflow)


def cancel_requested(info: SessionInfo, now: float) -> SessionInfo:
    """The sessions row after ``request_cancel`` at ``now``: an ended session unchanged; a
    running one with a live claim only marked (its owner stops it); any other ``cancelled``,
    its claim dropped."""
    if info.status in ENDED_STATUSES:
        return info
    if info.status == "running" and live_claim(info.owner, info.lease_expires, now):
        return info._replace(cancel_requested=True, updated_at=now)
    return info._replace(
        status="cancelled", owner=None, lease_expires=None, cancel_requested=True, updated_at=now
    )


def holds(info: SessionInfo | None, owner: str) -> bool:
    """Whether ``owner`` holds the session (may renew its lease, release it, write for it)."""
    return info is not None and info.owner == owner


def check_fence(owners: Mapping[str, str] | None, owner_of: Callable[[str], str | None]) -> None:
    """Fencing: raise :class:`Fenced` naming every session of ``owners`` (session id -> the
    owner a write is made for) whose sessions row names another owner, or none, or that has no
    row (``owner_of`` returns ``None`` for both)."""
    if owners:
        fenced = {sid for sid, owner in owners.items() if owner_of(sid) != owner}
        if fenced:
            raise Fenced(fenced)

"""The rules of claims and pruning that every backend applies the same way: when a claim is
live, when a session may be claimed, and which prune candidates are deleted or skipped. The SQL
stores state the same rules in their statements; the conformance suite checks that they agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .backend import PruneResult, SessionInfo

__all__ = ["PruneCandidate", "claimable", "live_claim", "select_prunable"]


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

"""The Temporal workflow that is one session's journal, mailbox and sessions row.

One workflow execution per session id (workflow id ``<prefix><session id>``, type
``jeevesagent.session``). It runs no user code: its state is the session's journal rows, its
mailbox and its sessions row, and its Update handlers are the writes of
:class:`~jeevesagent.runtime._temporal.store.TemporalJournalStore` (each completed Update is in
the workflow's history, so a write is durable when the Update returns). Signals fill the mailbox;
queries read. Everything here is deterministic (the clock is ``workflow.now()``, the time of the
workflow task), and the claim and fencing rules are the ones every store applies
(``_journal/rules.py``).

Wire format: a row is ``[base64 data, created_at]``; a sessions row is ``SessionInfo`` as a list.
The state is carried to a new run by continue-as-new when the server suggests it (history length
or size), after every handler in flight has finished.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from .._journal.backend import SessionInfo
from .._journal.commit import Fenced
from .._journal.rules import (
    PruneCandidate,
    cancel_requested,
    check_fence,
    claimed,
    created,
    holds,
    select_prunable,
    suspended,
)

__all__ = ["WORKFLOW_TYPE", "SessionState", "SessionWorkflow", "b64", "unb64"]

WORKFLOW_TYPE = "jeevesagent.session"
FENCED = "Fenced"  # ApplicationError type of a fenced write
EMPTY = "Empty"  # ApplicationError type of a rejected take: nothing to take

RowJ = list[Any]  # [base64 data, created_at]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class SessionState:
    """Everything one session keeps; the input of a run continued-as-new."""

    info: list[Any] | None = None  # SessionInfo as a list; None: no sessions row
    steps: dict[str, RowJ] = field(default_factory=dict)
    streams: dict[str, RowJ] = field(default_factory=dict)
    mailbox: dict[str, list[RowJ]] = field(default_factory=dict)


@workflow.defn(name=WORKFLOW_TYPE, sandboxed=False)
class SessionWorkflow:
    """The journal of one session (see the module docstring)."""

    @workflow.init
    def __init__(self, state: SessionState | None) -> None:
        # The state a run continued-as-new carries, set before any handler runs: an Update may
        # be the first thing a new run handles.
        self.s = state if state is not None else SessionState()
        self.deleted = False

    @workflow.run
    async def run(self, state: SessionState | None) -> None:
        await workflow.wait_condition(
            lambda: self.deleted or workflow.info().is_continue_as_new_suggested()
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self.deleted:
            workflow.continue_as_new(self.s)

    # -- helpers ---------------------------------------------------------------------------------
    def _now(self) -> float:
        return workflow.now().timestamp()

    def _info(self) -> SessionInfo | None:
        return None if self.s.info is None else SessionInfo(*self.s.info)

    def _set(self, info: SessionInfo) -> list[Any]:
        self.s.info = list(info)
        return self.s.info

    def _fence(self, owner: str | None) -> None:
        if owner is None:
            return
        sid = workflow.info().workflow_id
        info = self._info()
        try:
            check_fence({sid: owner}, lambda _: None if info is None else info.owner)
        except Fenced:
            raise ApplicationError("another owner holds the session", type=FENCED) from None

    def _write(self, records: list[list[Any]]) -> dict[str, RowJ]:
        """Insert ``[kind, key, data, created_at]`` records, first writer wins; the rows kept
        for conflicting keys, by ``"kind:key"``."""
        conflicts: dict[str, RowJ] = {}
        for kind, key, data, created_at in records:
            table = self.s.steps if kind == 0 else self.s.streams
            if key in table:
                conflicts[f"{kind}:{key}"] = table[key]
            else:
                table[key] = [data, created_at]
        return conflicts

    def _steps(self) -> int:
        return len(self.s.steps) + len(self.s.streams)

    # -- updates: the writes ---------------------------------------------------------------------
    @workflow.update(name="open")
    def open(self, owner: str, lease: float) -> dict[str, Any]:
        info = self._claim(owner, lease)
        if info.owner != owner:
            return {"info": list(info), "journal": None, "pending": []}
        return {
            "info": list(info),
            "journal": [self.s.steps, self.s.streams],
            "pending": sorted(self.s.mailbox),
        }

    @workflow.update(name="claim")
    def claim(self, owner: str, lease: float) -> list[Any]:
        return list(self._claim(owner, lease))

    def _claim(self, owner: str, lease: float) -> SessionInfo:
        sid = workflow.info().workflow_id.partition(":")[2]
        info = claimed(self._info(), sid, owner, lease, self._now())
        self._set(info)
        return info

    @workflow.update(name="renew")
    def renew(self, owner: str, lease: float) -> bool:
        info = self._info()
        if info is None or not holds(info, owner):
            return False
        now = self._now()
        self._set(info._replace(lease_expires=now + lease, updated_at=now))
        return True

    @workflow.update(name="release")
    def release(self, owner: str, status: str, steps: int) -> None:
        self._release(owner, status, steps)

    def _release(self, owner: str, status: str, steps: int) -> None:
        info = self._info()
        if info is not None and holds(info, owner):
            self._set(
                info._replace(
                    status=status,
                    owner=None,
                    lease_expires=None,
                    updated_at=self._now(),
                    steps=steps,
                )
            )

    @workflow.update(name="write")
    def write(self, records: list[list[Any]], owner: str | None) -> dict[str, RowJ]:
        self._fence(owner)
        return self._write(records)

    @workflow.update(name="finish")
    def finish(
        self, owner: str, records: list[list[Any]], status: str, steps: int
    ) -> dict[str, RowJ]:
        self._fence(owner)
        conflicts = self._write(records)
        self._release(owner, status, steps)
        return conflicts

    @workflow.update(name="take")
    def take(self, name: str, key: str | None, owner: str | None) -> RowJ:
        if key is not None and key in self.s.steps:
            return self.s.steps[key]
        if key is not None:
            self._fence(owner)
        queue = self.s.mailbox[name]
        data = queue.pop(0)[0]
        if not queue:
            del self.s.mailbox[name]
        row = [data, self._now()]
        if key is not None:
            self.s.steps[key] = row
        return row

    @take.validator
    def _take_something(self, name: str, key: str | None, owner: str | None) -> None:
        # A rejected update leaves no event in the history: a poll that finds nothing is free.
        if (key is None or key not in self.s.steps) and not self.s.mailbox.get(name):
            raise ApplicationError("no signal waiting", type=EMPTY)

    @workflow.update(name="create")
    def create(self, name: str, args: list[Any], owner: str | None, lease: float) -> list[Any]:
        if self.s.info is None:
            self._write([args])
            sid = workflow.info().workflow_id.partition(":")[2]
            self._set(created(sid, name, owner, lease, self._now()))
        return [self.s.info, self.s.steps.get(args[1])]

    @workflow.update(name="cancel")
    def cancel(self) -> list[Any] | None:
        info = self._info()
        if info is None:
            return None
        return self._set(cancel_requested(info, self._now()))

    @workflow.update(name="suspend")
    def suspend(
        self, owner: str, waiting_for: str | None, wake_at: float | None, steps: int
    ) -> list[Any] | None:
        info = suspended(self._info(), owner, waiting_for, wake_at, steps, self._now())
        return None if info is None else self._set(info)

    @workflow.update(name="delete")
    def delete(
        self, older_than: float | None, statuses: list[str] | None, dry_run: bool
    ) -> list[list[str]]:
        """Prune this session if it matches: the run ends (its state is dropped)."""
        info = self._info()
        sid = workflow.info().workflow_id.partition(":")[2]
        times = [r[1] for r in (*self.s.steps.values(), *self.s.streams.values())]
        times += [r[1] for q in self.s.mailbox.values() for r in q]
        candidate = (
            PruneCandidate(sid, None, None, None, max(times, default=0.0))
            if info is None
            else PruneCandidate(sid, info.status, info.owner, info.lease_expires, info.updated_at)
        )
        result = select_prunable(
            [candidate], older_than, None if statuses is None else tuple(statuses), self._now()
        )
        if result.pruned and not dry_run:
            self.s = SessionState()
            self.deleted = True
        return [result.pruned, result.skipped]

    # -- signals: the mailbox --------------------------------------------------------------------
    @workflow.signal(name="send")
    def send(self, name: str, data: str, created_at: float) -> None:
        self.s.mailbox.setdefault(name, []).append([data, created_at])

    # -- queries: the reads ----------------------------------------------------------------------
    @workflow.query(name="journal")
    def journal(self) -> list[dict[str, RowJ]]:
        return [self.s.steps, self.s.streams]

    @workflow.query(name="row")
    def row(self, kind: int, key: str) -> RowJ | None:
        return (self.s.steps if kind == 0 else self.s.streams).get(key)

    @workflow.query(name="pending")
    def pending(self) -> dict[str, int]:
        return {name: len(q) for name, q in self.s.mailbox.items()}

    @workflow.query(name="info")
    def info(self) -> list[Any] | None:
        return self.s.info

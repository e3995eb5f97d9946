"""``TemporalJournalStore``: a :class:`JournalBackend` whose journal, mailbox and sessions table
live in a Temporal cluster, one workflow execution per session (``_temporal/workflow.py``).

Each write is one Temporal Update of the session's workflow (returned once the Update is
completed, so it is in the workflow's history: durable); a signal is a Temporal Signal (signal
with start, so a session that never ran can receive one); reads are Queries (no history events).
The store runs one Temporal worker for the session workflows on its task queue, from its first
use until ``aclose()``: any process's store may process any session's workflow tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import anyio
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from .._core.values import Codec
from .._errors import RuntimeJournalError, StoreError
from .._journal.backend import (
    JournalBackend,
    OpenedSession,
    PruneResult,
    SessionInfo,
    SessionJournal,
)
from .._journal.commit import Fenced
from .._journal.rows import Record, Row
from .workflow import EMPTY, FENCED, WORKFLOW_TYPE, SessionWorkflow, b64, unb64

__all__ = ["TemporalJournalStore", "require_asyncio"]

T = TypeVar("T")


def require_asyncio(what: str) -> None:
    """Refuse to run outside asyncio (temporalio is asyncio-only)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeJournalError(
            f"{what} needs asyncio: temporalio runs only on asyncio, and this is another event "
            "loop (trio?). Under trio use SqliteRuntime or PostgresRuntime, or run this part of "
            "the application with asyncio."
        ) from None


class _Missing(Exception):
    """No workflow for the session (it never ran, or was pruned)."""


class _Empty(Exception):
    """A take found nothing to take (its Update was rejected)."""


def _row(j: list[Any] | None) -> Row | None:
    return None if j is None else Row(unb64(j[0]), float(j[1]))


def _rows(table: Mapping[str, list[Any]]) -> dict[str, Row]:
    return {key: Row(unb64(j[0]), float(j[1])) for key, j in table.items()}


def _info(j: list[Any] | None) -> SessionInfo | None:
    return None if j is None else SessionInfo(*j)


def _wire(r: Record) -> list[Any]:
    return [r.kind, r.key, b64(r.data), r.created_at]


class TemporalJournalStore(JournalBackend):
    """A journal store on a Temporal cluster (see the module docstring and ``TemporalRuntime``).

    :param client: a connected ``temporalio.client.Client`` (its namespace is used)
    :param task_queue: the task queue of the session workflows; every runtime sharing sessions
        must use the same one (and the same ``id_prefix``)
    :param id_prefix: workflow ids are ``f"{id_prefix}:{session_id}"`` (default: the task
        queue). Workflow ids are unique per namespace, whatever the task queue: two
        applications sharing a namespace need distinct prefixes
    :param sticky_timeout: seconds a workflow task waits for the worker that last ran the session
        before any worker takes it (Temporal's ``sticky_queue_schedule_to_start_timeout``): how
        long a session whose process died waits before another process can open it
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = "jeevesagent",
        id_prefix: str | None = None,
        sticky_timeout: float = 1.0,
        rpc_timeout: float = 30.0,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
    ) -> None:
        id_prefix = task_queue if id_prefix is None else id_prefix
        if ":" in id_prefix:
            raise ValueError(
                f"id_prefix (default: the task queue) must not contain ':', got {id_prefix!r}"
            )
        super().__init__(codec=codec, signing_key=signing_key)
        self.client = client
        self.task_queue = task_queue
        self.id_prefix = id_prefix
        self._rpc_timeout = timedelta(seconds=rpc_timeout)
        self._worker = Worker(
            client,
            task_queue=task_queue,
            workflows=[SessionWorkflow],
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=sticky_timeout),
        )
        self._worker_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TemporalJournalStore {state} task_queue={self.task_queue!r}>"

    # -- plumbing --------------------------------------------------------------------------------
    def _id(self, session_id: str) -> str:
        return f"{self.id_prefix}:{session_id}"

    def _handle(self, session_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self._id(session_id))

    def _ensure_worker(self, session_id: str | None, step: str | None) -> None:
        self.check_open(session_id, step)
        require_asyncio("TemporalJournalStore")
        task = self._worker_task
        if task is None:
            # The worker lives as long as the store: from its first use until aclose().
            self._worker_task = asyncio.get_running_loop().create_task(self._worker.run())
        elif task.done():
            raise StoreError(
                f"the Temporal worker of task queue {self.task_queue!r} stopped "
                f"({task.exception() if not task.cancelled() else 'cancelled'}); session "
                f"{session_id!r} cannot be served. Check the Temporal server, then open a new "
                "runtime.",
                session_id=session_id,
                step=step,
            )

    async def _call(self, session_id: str, step: str | None, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Temporal call for ``session_id``, translating its errors at this boundary."""
        self._ensure_worker(session_id, step)
        try:
            return await call()
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == FENCED:
                raise Fenced({session_id}) from None
            if isinstance(cause, ApplicationError) and cause.type == EMPTY:
                raise _Empty from None
            raise self._error(session_id, step, exc) from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise _Missing from None
            raise self._error(session_id, step, exc) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise self._error(session_id, step, exc) from exc

    def _error(self, session_id: str, step: str | None, exc: BaseException) -> StoreError:
        return StoreError(
            f"Temporal failed for session {session_id!r} (step {step!r}): {exc}. Check that the "
            f"Temporal server is up and a worker polls task queue {self.task_queue!r}; the step "
            "was not recorded, so running the session again retries it.",
            session_id=session_id,
            step=step,
        )

    async def _update(
        self, session_id: str, step: str | None, name: str, *args: Any, start: bool = False
    ) -> Any:
        """Run Update ``name`` on the session's workflow (starting it first if ``start``)."""

        async def call() -> Any:
            if start:
                op = WithStartWorkflowOperation(
                    SessionWorkflow.run,
                    None,
                    id=self._id(session_id),
                    task_queue=self.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
                return await self.client.execute_update_with_start_workflow(
                    name, args=args, start_workflow_operation=op, rpc_timeout=self._rpc_timeout
                )
            return await self._handle(session_id).execute_update(
                name, args=args, rpc_timeout=self._rpc_timeout
            )

        return await self._call(session_id, step, call)

    async def _query(self, session_id: str, name: str, *args: Any) -> Any:
        handle = self._handle(session_id)
        return await self._call(
            session_id,
            None,
            lambda: handle.query(name, args=args, rpc_timeout=self._rpc_timeout),
        )

    # -- hooks -----------------------------------------------------------------------------------
    async def read_session(self, session_id: str) -> SessionJournal:
        try:
            steps, streams = await self._query(session_id, "journal")
        except _Missing:
            return SessionJournal({}, {})
        return SessionJournal(_rows(steps), _rows(streams))

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        # One Update per session (each workflow is one session's journal), concurrently. A
        # batch spanning sessions is atomic per session, not across them.
        by_session: dict[str, list[Record]] = {}
        for r in records:
            by_session.setdefault(r.session_id, []).append(r)
        for sid in owners or {}:
            by_session.setdefault(sid, [])
        conflicts: dict[tuple[str, int, str], Row] = {}
        fenced: set[str] = set()
        if owners and len(by_session) > 1:
            # A batch of several sessions: refuse all of it if one is fenced (checked first; the
            # write of each session is fenced again by its own Update).
            for sid, owner in owners.items():
                info = await self.session_info(sid)
                if info is None or info.owner != owner:
                    fenced.add(sid)
            if fenced:
                raise Fenced(fenced)

        async def write(sid: str, rows: list[Record]) -> None:
            owner = (owners or {}).get(sid)
            step = rows[0].key if rows else None
            try:
                found = await self._update(
                    sid, step, "write", [_wire(r) for r in rows], owner, start=owner is None
                )
            except Fenced:
                fenced.add(sid)
                return
            except _Missing:
                fenced.add(sid)  # an owner was given, but the session has no workflow: no claim
                return
            for where, j in found.items():
                kind, _, key = where.partition(":")
                conflicts[(sid, int(kind), key)] = Row(unb64(j[0]), float(j[1]))

        async with anyio.create_task_group() as tg:
            for sid, rows in by_session.items():
                tg.start_soon(write, sid, rows)
        if fenced:
            raise Fenced(fenced)
        return conflicts

    async def read_row(self, session_id: str, kind: int, key: str) -> Row | None:
        try:
            return _row(await self._query(session_id, "row", kind, key))
        except _Missing:
            return None

    async def delete_sessions(
        self,
        older_than: float | None,
        sessions: list[str] | None,
        statuses: tuple[str, ...] | None,
        dry_run: bool,
    ) -> PruneResult:
        # Per session, one Update decides and deletes (the workflow run ends); not one
        # transaction across sessions.
        ids = sessions if sessions is not None else await self._running_ids()
        pruned: list[str] = []
        skipped: list[str] = []
        for sid in ids:
            try:
                p, s = await self._update(
                    sid,
                    None,
                    "delete",
                    older_than,
                    None if statuses is None else list(statuses),
                    dry_run,
                )
            except _Missing:
                continue
            pruned += p
            skipped += s
        return PruneResult(sorted(pruned), sorted(skipped))

    async def close_resources(self) -> None:
        task, self._worker_task = self._worker_task, None
        if task is None:
            return
        with anyio.CancelScope(shield=True):
            if not task.done():
                await self._worker.shutdown()
            await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise StoreError(f"the Temporal worker failed: {task.exception()}") from (
                task.exception()
            )

    # -- the mailbox -----------------------------------------------------------------------------
    async def send_signal(self, session_id: str, name: str, data: bytes, created_at: float) -> None:
        async def call() -> Any:
            return await self.client.start_workflow(
                SessionWorkflow.run,
                None,
                id=self._id(session_id),
                task_queue=self.task_queue,
                start_signal="send",
                start_signal_args=[name, b64(data), created_at],
                rpc_timeout=self._rpc_timeout,
            )

        await self._call(session_id, f"signal {name!r}", call)

    async def take_signal(
        self, session_id: str, name: str, key: str | None, owner: str | None
    ) -> Row | None:
        try:
            return _row(await self._update(session_id, key, "take", name, key, owner))
        except (_Missing, _Empty):
            return None

    async def pending_signals(self, session_id: str) -> int:
        try:
            return sum((await self._query(session_id, "pending")).values())
        except _Missing:
            return 0

    async def pending_names(self, session_id: str) -> list[str]:
        try:
            return sorted(await self._query(session_id, "pending"))
        except _Missing:
            return []

    # -- the sessions table ----------------------------------------------------------------------
    async def open_session(self, session_id: str, owner: str, lease: float) -> OpenedSession:
        # One round trip: claim, journal and the mailbox's names in one Update.
        self.check_open(session_id)
        found = await self._update(session_id, None, "open", owner, lease, start=True)
        info = SessionInfo(*found["info"])
        if found["journal"] is None:
            return OpenedSession(info, None, [])
        steps, streams = found["journal"]
        return OpenedSession(info, SessionJournal(_rows(steps), _rows(streams)), found["pending"])

    async def claim(self, session_id: str, owner: str, lease: float) -> SessionInfo:
        return SessionInfo(*await self._update(session_id, None, "claim", owner, lease, start=True))

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        try:
            return bool(await self._update(session_id, None, "renew", owner, lease))
        except _Missing:
            return False

    async def release(self, session_id: str, owner: str, status: str, steps: int) -> None:
        with contextlib.suppress(_Missing):  # no workflow: no claim to release
            await self._update(session_id, None, "release", owner, status, steps)

    async def finish(
        self, session_id: str, owner: str, records: Sequence[Record], status: str, steps: int
    ) -> dict[tuple[str, int, str], Row]:
        # One Update: the outcome rows and the status together, fenced.
        step = records[0].key if records else None
        self.check_open(session_id, step)
        try:
            found = await self._update(
                session_id, step, "finish", owner, [_wire(r) for r in records], status, steps
            )
        except _Missing:
            raise Fenced({session_id}) from None
        out: dict[tuple[str, int, str], Row] = {}
        for where, j in found.items():
            kind, _, key = where.partition(":")
            out[(session_id, int(kind), key)] = Row(unb64(j[0]), float(j[1]))
        return out

    async def list_sessions(
        self,
        status: str | None = None,
        *,
        workflows: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[SessionInfo]:
        self.check_open()
        rows = []
        for sid in await self._running_ids():
            info = await self.session_info(sid)
            if (
                info is not None
                and (status is None or info.status == status)
                and (workflows is None or info.workflow in workflows)
            ):
                rows.append(info)
        rows.sort(key=lambda i: (i.created_at, i.session_id))
        return rows if limit is None else rows[:limit]

    async def _running_ids(self) -> list[str]:
        """Session ids of the running session workflows of this task queue (Temporal's
        visibility store: eventually consistent, so a session made a moment ago may be
        missing)."""
        self._ensure_worker(None, None)
        query = (
            f"WorkflowType = '{WORKFLOW_TYPE}' AND TaskQueue = '{self.task_queue}' "
            "AND ExecutionStatus = 'Running'"
        )
        prefix = f"{self.id_prefix}:"
        ids = []
        try:
            async for wf in self.client.list_workflows(query, rpc_timeout=self._rpc_timeout):
                if wf.id.startswith(prefix):
                    ids.append(wf.id.removeprefix(prefix))
        except RPCError as exc:
            raise StoreError(f"Temporal could not list the session workflows: {exc}") from exc
        return ids

    async def session_info(self, session_id: str) -> SessionInfo | None:
        self.check_open(session_id)
        try:
            return _info(await self._query(session_id, "info"))
        except _Missing:
            return None

    async def create_session(
        self,
        session_id: str,
        workflow: str,
        arguments: Record,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> tuple[SessionInfo, Row | None]:
        info, row = await self._update(
            session_id,
            arguments.key,
            "create",
            workflow,
            _wire(arguments),
            owner,
            lease,
            start=True,
        )
        return SessionInfo(*info), _row(row)

    async def request_cancel(self, session_id: str) -> SessionInfo | None:
        try:
            return _info(await self._update(session_id, None, "cancel"))
        except _Missing:
            return None

    async def suspend(
        self,
        session_id: str,
        owner: str,
        waiting_for: str | None,
        wake_at: float | None,
        steps: int,
    ) -> SessionInfo | None:
        try:
            return _info(
                await self._update(session_id, None, "suspend", owner, waiting_for, wake_at, steps)
            )
        except _Missing:
            return None

    async def now(self) -> float:
        return time.time()

"""The conformance checks of the workflow part of the sessions table -- ``create_session``,
``request_cancel``, ``list_sessions``' filters, what claims keep, and the wake-ups of releases,
new sessions and cancel requests -- as a mixin of
:class:`jeevesagent.runtime.testing.JournalBackendConformance` (the one class users subclass;
it provides the ``backend`` and ``other`` fixtures these tests take, and their marks). Only
``jeevesagent.runtime.testing`` imports this module.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._core.keys import workflow_args_key
from .backend import JournalBackend, SessionInfo
from .conformance import LIVE, A, B, decode_row, record, wait_until_expired

__all__ = ["WorkflowSessionChecks"]

ARGS = workflow_args_key()


def args(backend: JournalBackend, session_id: str, value: Any) -> Any:
    """A workflow session's arguments row, encoded with the backend's codec."""
    return record(backend, session_id, ARGS, value)


async def created_value(
    backend: JournalBackend, session_id: str, workflow: str, value: Any, **claim: Any
) -> tuple[SessionInfo, Any]:
    """``create_session`` with arguments ``value``: the row afterwards and the journaled
    arguments' value."""
    info, row = await backend.create_session(
        session_id, workflow, args(backend, session_id, value), **claim
    )
    assert isinstance(info, SessionInfo)
    assert row is not None, "a workflow session's arguments row is returned"
    return info, decode_row(backend, session_id, ARGS, row)


async def ended(backend: JournalBackend, session_id: str, status: str) -> SessionInfo:
    """A plain session claimed by ``A`` and released as ``status``."""
    await backend.claim(session_id, A, LIVE)
    await backend.release(session_id, A, status, 2)
    info = await backend.session_info(session_id)
    assert info is not None
    assert (info.status, info.owner) == (status, None), f"release as {status!r}"
    return info


class WorkflowSessionChecks:
    """Workflow sessions: made, cancelled, listed, claimed, and the wake-ups they send."""

    async def test_list_sessions_by_workflow_status_and_limit(
        self, backend: JournalBackend
    ) -> None:
        await created_value(backend, "a1", "wa", 1)
        await anyio.sleep(0.01)
        await created_value(backend, "b1", "wb", 2)
        await anyio.sleep(0.01)
        await created_value(backend, "a2", "wa", 3, owner=A, lease=LIVE)
        await anyio.sleep(0.01)
        await backend.claim("plain", A, LIVE)
        await anyio.sleep(0.01)
        await created_value(backend, "b2", "wb", 4)

        async def ids(status: str | None = None, **filters: Any) -> list[str]:
            return [i.session_id for i in await backend.list_sessions(status, **filters)]

        assert await ids() == ["a1", "b1", "a2", "plain", "b2"], "oldest first"
        assert await ids(workflows=["wa"]) == ["a1", "a2"]
        assert await ids(workflows=("wb", "wa")) == ["a1", "b1", "a2", "b2"]
        assert await ids("pending", workflows=["wa", "wb"]) == ["a1", "b1", "b2"]
        assert await ids("pending", workflows=["wb"], limit=1) == ["b1"]
        assert await ids("running") == ["a2", "plain"]
        assert await ids(limit=2) == ["a1", "b1"]
        assert await ids(workflows=["nothing"]) == []
        assert await ids(workflows=[]) == []
        assert await ids(limit=0) == []
        [b1, b2] = await backend.list_sessions("pending", workflows=["wb"])
        assert b1.session_id == "b1"
        assert (b2.workflow, b2.cancel_requested) == ("wb", False)
        await backend.release("plain", A, "waiting", 1)  # every status is valid
        assert await ids("waiting") == ["plain"]

    async def test_create_session_makes_a_pending_session(self, backend: JournalBackend) -> None:
        before = await backend.now()
        info, value = await created_value(backend, "s", "wf", {"x": [1, 2]})
        after = await backend.now()
        assert value == {"x": [1, 2]}
        assert info[:4] == ("s", "pending", None, None)
        assert (info.steps, info.workflow, info.cancel_requested) == (0, "wf", False)
        assert before - 0.01 <= info.created_at <= info.updated_at <= after + 0.01
        assert await backend.session_info("s") == info
        assert await backend.list_sessions() == [info]
        entry = await backend.get_step("s", ARGS)
        assert entry is not None, "the arguments are an ordinary journal row of the session"
        assert entry.value == {"x": [1, 2]}

    async def test_create_session_with_an_owner_claims_it(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        before = await backend.now()
        info, _ = await created_value(backend, "s", "wf", 1, owner=A, lease=30.0)
        after = await backend.now()
        assert (info.status, info.owner, info.workflow) == ("running", A, "wf")
        assert info.lease_expires is not None
        assert before + 30 - 0.01 <= info.lease_expires <= after + 30 + 0.01, (
            "the lease is measured on the backend's clock, now()"
        )
        assert (await other.claim("s", B, LIVE)).owner == A, "the creator holds the claim"
        await backend.append([record(backend, "s", "k", "v")], owners={"s": A})
        assert await backend.renew("s", A, LIVE) is True

    async def test_create_session_leaves_an_existing_session_alone(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        plain = await backend.claim("plain", A, LIVE)
        info, row = await other.create_session("plain", "wf", args(other, "plain", 1), B, LIVE)
        assert (info, row) == (plain, None), "a plain session stays as it is, without arguments"
        assert await backend.get_step("plain", ARGS) is None
        first, _ = await created_value(backend, "s", "wf", "first")
        again, kept = await created_value(other, "s", "other-wf", "second", owner=B, lease=LIVE)
        assert (again, kept) == (first, "first"), "the first creation stands"
        done = await ended(backend, "done", "completed")
        info, row = await other.create_session("done", "wf", args(other, "done", 1))
        assert (info, row) == (done, None)

    async def test_create_session_arguments_first_writer_wins(
        self, backend: JournalBackend
    ) -> None:
        await backend.append([args(backend, "s", "journaled before")])
        info, value = await created_value(backend, "s", "wf", "later")
        assert (info.status, info.workflow, value) == ("pending", "wf", "journaled before")

    async def test_concurrent_create_session_makes_one_session(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        async def create(sid: str, i: int, results: list[tuple[SessionInfo, Any]]) -> None:
            store = (backend, other)[i % 2]
            owner = None if i % 3 == 0 else f"owner-{i}"
            results.append(await created_value(store, sid, "wf", i, owner=owner, lease=LIVE))

        for sid in ("s0", "s1", "s2"):
            results: list[tuple[SessionInfo, Any]] = []
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(create, sid, i, results)
            infos = {info for info, _ in results}
            assert len(infos) == 1, f"one session is made, not {len(infos)}: {infos}"
            [info] = infos
            [value] = {value for _, value in results}
            winner = None if value % 3 == 0 else f"owner-{value}"
            assert info.owner == winner, "the arguments are those of the one that made it"
        assert len(await backend.list_sessions()) == 3

    async def test_request_cancel_per_status(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        assert await backend.request_cancel("nobody") is None
        assert await backend.list_sessions() == [], "cancelling no session makes none"
        for status in ("completed", "failed", "cancelled"):
            info = await ended(backend, status, status)
            assert await other.request_cancel(status) == info, f"{status}: unchanged"
        await created_value(backend, "pending", "wf", 1)
        for status in ("interrupted", "waiting", "imported"):
            await ended(backend, status, status)
        expired = await backend.claim("expired", A, 0.2)
        await wait_until_expired(backend, expired.lease_expires)
        for sid in ("pending", "interrupted", "waiting", "imported", "expired"):
            before = await backend.now()
            after = await other.request_cancel(sid)
            assert after is not None
            assert after[1:4] == ("cancelled", None, None), f"{sid}: cancelled at once"
            assert after.cancel_requested is True
            assert after.updated_at >= before - 0.01
            assert await backend.session_info(sid) == after
        pending = await backend.session_info("pending")
        assert pending is not None
        assert pending.workflow == "wf", "a cancelled session keeps its workflow"

    async def test_request_cancel_of_a_live_claim_only_marks_it(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        held, _ = await created_value(backend, "s", "wf", 1, owner=A, lease=LIVE)
        info = await other.request_cancel("s")
        assert info is not None
        assert info[:4] == held[:4], "its owner keeps it, to stop it"
        assert (info.workflow, info.cancel_requested) == ("wf", True)
        assert await backend.renew("s", A, LIVE) is True
        assert (await other.claim("s", B, LIVE)).owner == A
        await backend.release("s", A, "cancelled", 1)
        final = await other.session_info("s")
        assert final is not None
        assert (final.status, final.owner, final.cancel_requested) == ("cancelled", None, True)
        assert await backend.request_cancel("s") == final, "ended: unchanged"

    async def test_claim_keeps_workflow_and_cancel_requested(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await created_value(backend, "s", "wf", 1)
        claimed = await backend.claim("s", A, 0.2)
        assert (claimed.status, claimed.owner) == ("running", A)
        assert (claimed.workflow, claimed.cancel_requested) == ("wf", False)
        await other.request_cancel("s")
        await wait_until_expired(backend, claimed.lease_expires)
        # The lease ran out: the owner stopped without releasing; another claims the session.
        taken = await other.claim("s", B, LIVE)
        assert (taken.owner, taken.workflow, taken.cancel_requested) == (B, "wf", True)
        await other.release("s", B, "interrupted", 0)
        again = await backend.claim("s", A, LIVE)
        assert (again.status, again.owner) == ("running", A)
        assert (again.workflow, again.cancel_requested) == ("wf", True), "no claim clears it"

    async def test_release_create_and_cancel_wake_watchers(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        waiting: dict[str, anyio.Event] = {}
        threads: set[int] = set()

        def wake(session_id: str) -> None:
            threads.add(threading.get_ident())
            event = waiting.pop(session_id, None)
            if event is not None:
                event.set()

        if not await backend.watch(wake):
            return  # the backend does not push: waiters poll
        # Unique ids: a database-wide channel may carry other tests' notices.
        made, cancelled, released = (f"{what}-{uuid.uuid4().hex}" for what in "mcr")
        await backend.claim(cancelled, A, LIVE)
        await backend.claim(released, B, LIVE)

        async def woken_by(session_id: str, change: Callable[[], Awaitable[object]]) -> None:
            event = waiting[session_id] = anyio.Event()
            await change()
            with anyio.fail_after(10):
                await event.wait()

        await woken_by(made, lambda: other.create_session(made, "wf", args(other, made, 1)))
        await woken_by(cancelled, lambda: other.request_cancel(cancelled))
        await woken_by(released, lambda: other.release(released, B, "completed", 0))
        assert threads == {threading.get_ident()}, "wake runs in the event loop's thread"

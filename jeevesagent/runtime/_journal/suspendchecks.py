"""The conformance checks of suspension in the sessions table -- ``suspend`` (fenced, one
transaction, ``cancelled`` when a cancel came meanwhile), ``resumable`` (a signal waited for is
in the mailbox, or the wake-up time passed) and ``wake_in`` -- as a mixin of
:class:`jeevesagent.runtime.testing.JournalBackendConformance` (which provides the ``backend``
and ``other`` fixtures). Only ``jeevesagent.runtime.testing`` imports this module.
"""

from __future__ import annotations

import uuid

from .backend import JournalBackend
from .conformance import LIVE, A, B, send
from .sessionchecks import created_value

__all__ = ["SuspensionChecks"]


class SuspensionChecks:
    """Suspended workflow sessions: recorded ``waiting``, found again when they are due."""

    async def test_suspend_releases_the_claim_and_records_what_it_waits_for(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await created_value(backend, "s", "wf", 1)
        await backend.claim("s", A, LIVE)
        assert await other.suspend("s", B, "go", None, 3) is None, "fenced: B holds nothing"
        info = await backend.suspend("s", A, "go", 123.5, 3)
        assert info is not None
        assert (info.status, info.owner, info.lease_expires, info.steps) == (
            "waiting",
            None,
            None,
            3,
        )
        assert (info.waiting_for, info.wake_at, info.workflow) == ("go", 123.5, "wf")
        assert await other.session_info("s") == info
        assert [i.session_id for i in await other.list_sessions("waiting")] == ["s"]
        again = await other.claim("s", B, LIVE)
        assert (again.status, again.owner) == ("running", B)
        assert (again.waiting_for, again.wake_at) == (None, None), "a claim clears them"

    async def test_suspend_after_a_cancel_request_ends_cancelled(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await created_value(backend, "s", "wf", 1)
        await backend.claim("s", A, LIVE)
        await other.request_cancel("s")  # a live claim: only marked
        info = await backend.suspend("s", A, "go", None, 1)
        assert info is not None
        assert (info.status, info.owner, info.cancel_requested) == ("cancelled", None, True)
        assert await other.resumable(["wf"]) == []

    async def test_resumable_finds_a_signal_waited_for_or_a_passed_wake_up_time(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        wf = f"wf-{uuid.uuid4().hex}"
        now = await backend.now()
        for sid in ("signal", "other-name", "due", "later", "no-wake"):
            await created_value(backend, sid, wf, 1)
            await backend.claim(sid, A, LIVE)
        await backend.suspend("signal", A, "go", None, 1)
        await backend.suspend("other-name", A, "go", None, 1)
        await backend.suspend("due", A, None, now - 1.0, 1)
        await backend.suspend("later", A, "go", now + 600.0, 1)
        await backend.suspend("no-wake", A, None, None, 1)
        assert [i.session_id for i in await other.resumable([wf])] == ["due"]
        assert await other.resumable(["another workflow"]) == []
        await send(other, "signal", "go", "x")
        await send(other, "other-name", "stop", "x")  # not the name it waits for
        found = await other.resumable([wf])
        assert [i.session_id for i in found] == ["signal", "due"]
        assert [i.session_id for i in await other.resumable([wf], limit=1)] == ["signal"]
        due = await other.wake_in([wf])
        assert due is not None
        assert -5.0 < due < 0.0, "the earliest wake-up time is past, on the store's clock"
        assert await other.wake_in(["another workflow"]) is None
        await backend.claim("due", B, LIVE)  # running again: no longer waiting
        left = await other.wake_in([wf])
        assert left is not None
        assert 500.0 < left <= 600.0

"""The conformance checks of ending a session with its outcome -- ``finish`` (the outcome rows
written, fenced by the owner, and the session released with its status: one durable commit in
the bundled durable stores, the composed default ``append`` then ``release`` elsewhere) -- as a
mixin of :class:`jeevesagent.runtime.testing.JournalBackendConformance` (which provides the
``backend`` and ``other`` fixtures). Only ``jeevesagent.runtime.testing`` imports this module.
"""

from __future__ import annotations

import anyio
import pytest

from .backend import STEP, STREAM, Fenced, JournalBackend
from .conformance import LIVE, A, B, decode_row, journal_rows, record, wait_until_expired
from .sessionchecks import created_value

__all__ = ["FinishChecks"]

RESULT = "w:result"


class FinishChecks:
    """Ending a session with its outcome in one call."""

    async def test_finish_writes_the_outcome_and_releases_with_its_status(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await created_value(backend, "w", "wf", 1)
        await backend.open_session("w", A, LIVE)
        woken = anyio.Event()
        pushed = await other.watch(lambda sid: woken.set() if sid == "w" else None)
        outcome = [record(backend, "w", "k", "buffered"), record(backend, "w", RESULT, {"r": 2})]
        conflicts = await backend.finish("w", A, outcome, "completed", 3)
        assert conflicts == {}, "nothing was recorded under these keys before"
        info = await other.session_info("w")
        assert info is not None
        assert (info.status, info.owner, info.lease_expires, info.steps) == (
            "completed",
            None,
            None,
            3,
        )
        assert (info.workflow, info.cancel_requested) == ("wf", False), "kept as they were"
        rows = await journal_rows(other, "w", STEP, ["k", RESULT])
        assert {k: decode_row(other, "w", k, r) for k, r in rows.items()} == {
            "k": "buffered",
            RESULT: {"r": 2},
        }, "every record is written, with the status"
        if pushed:
            with anyio.fail_after(10):
                await woken.wait()  # result() in another process waits for this notice
        opened = await other.open_session("w", B, LIVE)
        assert opened.info.owner == B, "released: anyone may claim it"

    async def test_finish_keeps_the_first_writer_and_says_so(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await backend.open_session("s", A, LIVE)
        first = record(backend, "s", "w:failure:0", "first")
        await backend.append([first, record(backend, "s", "c", ["x"], STREAM)], {"s": A})
        outcome = [
            record(backend, "s", "w:failure:0", "second"),
            record(backend, "s", "c", ["y"], STREAM),
        ]
        conflicts = await backend.finish("s", A, outcome, "failed", 2)
        assert set(conflicts) == {("s", STEP, "w:failure:0"), ("s", STREAM, "c")}
        assert decode_row(backend, "s", "w:failure:0", conflicts[("s", STEP, "w:failure:0")]) == (
            "first"
        )
        step = await journal_rows(other, "s", STEP, ["w:failure:0"])
        assert decode_row(other, "s", "w:failure:0", step["w:failure:0"]) == "first"
        info = await other.session_info("s")
        assert info is not None
        assert (info.status, info.owner) == ("failed", None), "released all the same"

    async def test_finish_by_an_owner_that_lost_the_claim_changes_nothing(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        old = await backend.open_session("s", A, 0.2)
        await wait_until_expired(other, old.info.lease_expires)
        assert (await other.open_session("s", B, LIVE)).info.owner == B
        with pytest.raises(Fenced) as caught:
            await backend.finish("s", A, [record(backend, "s", RESULT, 1)], "completed", 1)
        assert caught.value.session_ids == {"s"}
        assert await journal_rows(other, "s", STEP, [RESULT]) == {}, "no outcome written"
        info = await other.session_info("s")
        assert info is not None
        assert (info.status, info.owner) == ("running", B), "the new owner's claim stands"
        await backend.release("s", A, "failed", 0)  # not the holder: changes nothing either
        with pytest.raises(Fenced):  # a session nobody holds: fenced as well
            await backend.finish("t", A, [record(backend, "t", RESULT, 1)], "completed", 1)
        assert await journal_rows(other, "t", STEP, [RESULT]) == {}

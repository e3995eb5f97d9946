"""The conformance checks of opening and closing a session -- ``open_session`` (the claim, the
journal and the mailbox names in one call, with the same results as the composed default:
``claim``, ``load_session``, ``pending_names``) and ``release_lazy`` (a release visible at once,
fenced like ``release``), with the checks of ending one with its outcome (``finish``:
:mod:`.finishchecks`) -- as a mixin of
:class:`jeevesagent.runtime.testing.JournalBackendConformance` (which provides the ``backend``
and ``other`` fixtures). Only ``jeevesagent.runtime.testing`` imports this module.
"""

from __future__ import annotations

import anyio

from .._errors import SessionBusyError
from .backend import STEP, STREAM, JournalBackend, OpenedSession, SessionJournal
from .conformance import LIVE, A, B, decode_row, record, send, signal_key, wait_until_expired
from .finishchecks import FinishChecks
from .sessionchecks import ARGS, created_value

__all__ = ["OpenSessionChecks"]

KEYS = [(STEP, "k1"), (STEP, "k2"), (STREAM, "k1")]


async def values(
    backend: JournalBackend, session_id: str, journal: SessionJournal, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], object]:
    """The decoded rows of ``keys`` (kind, key) as the runtime finds them: in ``journal``, or,
    when it is not ``complete`` (a five-method store), through ``read_row``. A complete journal
    must hold nothing else."""
    found: dict[tuple[int, str], object] = {}
    for kind, key in keys:
        row = (journal.steps if kind == STEP else journal.streams).get(key)
        if row is None and not journal.complete:
            row = await backend.read_row(session_id, kind, key)
        if row is not None:
            found[(kind, key)] = decode_row(backend, session_id, key, row, kind)
    if journal.complete:
        listed = {(STEP, k) for k in journal.steps} | {(STREAM, k) for k in journal.streams}
        assert listed == set(found), f"the journal holds exactly {sorted(found)}"
    return found


async def composed(backend: JournalBackend, session_id: str, owner: str) -> OpenedSession:
    """What the default ``open_session`` returns (the contract's reference), without claiming:
    the row, the journal and the mailbox names as they are now."""
    info = await backend.session_info(session_id)
    assert info is not None
    return OpenedSession(
        info, await backend.load_session(session_id), await backend.pending_names(session_id)
    )


class OpenSessionChecks(FinishChecks):
    """Opening a session in one call, releasing it lazily, and ending it with its outcome."""

    async def test_open_session_claims_loads_and_lists_the_mailbox(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        opened = await backend.open_session("s", A, LIVE)
        assert isinstance(opened, OpenedSession)
        assert (opened.info.session_id, opened.info.status, opened.info.owner) == (
            "s",
            "running",
            A,
        )
        assert opened.journal is not None
        assert await values(backend, "s", opened.journal, KEYS) == {}, "a new session: no rows"
        assert opened.pending == []
        await backend.append(
            [
                record(backend, "s", "k1", 1),
                record(backend, "s", "k2", {"x": [2]}),
                record(backend, "s", "k1", ["c"], STREAM),
            ],
            {"s": A},
        )
        await send(other, "s", "zeta", 1)
        await send(other, "s", "alpha", 2)
        await send(other, "s", "zeta", 3)
        await backend.release_lazy("s", A, "interrupted", 3)
        opened = await other.open_session("s", B, LIVE)
        assert (opened.info.status, opened.info.owner, opened.info.steps) == ("running", B, 3)
        assert opened.journal is not None
        expected = {(STEP, "k1"): 1, (STEP, "k2"): {"x": [2]}, (STREAM, "k1"): ["c"]}
        assert await values(other, "s", opened.journal, KEYS) == expected
        assert opened.pending == ["alpha", "zeta"], "distinct names, sorted"
        reference = await composed(other, "s", B)
        assert opened.info == reference.info, "the row as the claim left it"
        assert reference.journal is not None
        assert await values(other, "s", reference.journal, KEYS) == expected
        assert opened.journal.complete == reference.journal.complete
        assert opened.pending == reference.pending
        assert await other.pending_signals("s") == 3, "opening takes no signal"
        row = await other.take_signal("s", "zeta", signal_key("zeta", 0), B)
        assert row is not None, "the new owner receives"

    async def test_open_session_held_by_a_live_owner_is_not_granted(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        held = await backend.open_session("s", A, LIVE)
        await backend.append([record(backend, "s", "k", 1)], {"s": A})
        await send(backend, "s", "go", 1)
        opened = await other.open_session("s", B, LIVE)
        assert opened.info.owner == A, "not granted: the holder's row"
        assert (opened.journal, opened.pending) == (None, [])
        assert opened.info.lease_expires == held.info.lease_expires, "the holder's lease stays"
        again = await backend.open_session("s", A, LIVE)
        assert again.info.owner == A, "the same owner opens it again"
        assert again.journal is not None
        assert await values(backend, "s", again.journal, [(STEP, "k")]) == {(STEP, "k"): 1}
        assert again.pending == ["go"]

    async def test_open_session_fences_the_owner_whose_lease_expired(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        old = await backend.open_session("s", A, 0.2)
        await wait_until_expired(other, old.info.lease_expires)
        opened = await other.open_session("s", B, LIVE)
        assert opened.info.owner == B, "an expired lease is taken over"
        refused: SessionBusyError | None = None
        try:
            await backend.append([record(backend, "s", "late", 1)], {"s": A})
        except SessionBusyError as exc:
            refused = exc
        assert refused is not None, "a write by the owner whose claim was taken is fenced"
        assert refused.session_id == "s"
        await other.append([record(other, "s", "mine", 2)], {"s": B})
        await backend.release_lazy("s", A, "completed", 0)  # not the holder: changes nothing
        info = await other.session_info("s")
        assert info is not None
        assert (info.status, info.owner) == ("running", B)

    async def test_open_session_keeps_the_workflow_and_the_cancel_request(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await created_value(backend, "w", "wf", 7)
        await backend.request_cancel("w")
        opened = await other.open_session("w", B, LIVE)
        assert (opened.info.owner, opened.info.workflow) == (B, "wf")
        assert opened.info.cancel_requested, "a claim never clears a cancel request"
        assert opened.journal is not None
        assert await values(other, "w", opened.journal, [(STEP, ARGS)]) == {(STEP, ARGS): 7}

    async def test_release_lazy_is_visible_at_once_and_wakes_watchers(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await backend.open_session("s", A, LIVE)
        woken = anyio.Event()
        pushed = await other.watch(lambda sid: woken.set() if sid == "s" else None)
        await backend.release_lazy("s", A, "completed", 4)
        info = await other.session_info("s")
        assert info is not None
        assert (info.status, info.owner, info.lease_expires, info.steps) == (
            "completed",
            None,
            None,
            4,
        )
        if pushed:
            with anyio.fail_after(10):
                await woken.wait()
        opened = await other.open_session("s", B, LIVE)
        assert opened.info.owner == B, "released: anyone may claim it"

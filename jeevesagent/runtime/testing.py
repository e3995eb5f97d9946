"""Testing helpers: :func:`check_replay` for your own workflows, and a conformance suite for store
backends.

``await check_replay(my_workflow, *args)`` runs a ``@workflow`` on a fresh journal, then again
interrupted after each recorded step in turn and resumed, and raises :class:`ReplayCheckError`
(an ``AssertionError``) naming the step if a resumed run returns another result, takes another
path, or runs a recorded step's function again::

    async def test_trip_resumes_from_every_step():
        assert await check_replay(trip, "Lisbon") == "booked"

The conformance suite checks that your ``JournalBackend`` keeps the contract
``JournaledRuntime`` relies on (journal rows written once, fencing, claims and leases, opening a
session in one call, releasing it lazily or with its outcome, the mailbox, workflow sessions made,
cancelled and listed, wake-ups, prune, close).

Subclass :class:`JournalBackendConformance` in one of your test modules (the class name must
start with ``Test``) and override the ``open_backend`` fixture: it returns a function that opens
a backend on **one fresh, empty storage per test** (called again, it opens another backend on
the same storage -- the same file, the same database and schema)::

    import pytest
    from jeevesagent.runtime.testing import JournalBackendConformance

    from mystore import MyBackend  # your JournalBackend subclass


    class TestMyBackend(JournalBackendConformance):
        @pytest.fixture
        def open_backend(self, tmp_path):
            return lambda: MyBackend(tmp_path / "journal.db")  # may also return an awaitable


    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):  # the event loops to run on (anyio's default: asyncio only)
        return request.param

The tests are ``async`` and marked ``@pytest.mark.anyio``: they need ``pytest`` and ``anyio``'s
pytest plugin (installed with anyio), and your project's ``anyio_backend`` fixture chooses the
event loops (``trio`` needs the trio package). Every backend opened is closed after its test.

Capabilities your store may lack are declared with class attributes, and the suite then checks
that it fails clearly instead (nothing is skipped silently):

- :attr:`~JournalBackendConformance.shared_storage` (default ``True``): backends opened on the
  same storage see each other's journal, claims and mailbox. Set it to ``False`` when the storage
  lives in the backend object (like ``InMemoryJournalStore``): ``open_backend`` must then return
  the same object each time, and the checks across backends run on that one object.
- :attr:`~JournalBackendConformance.can_prune` (default ``True``): ``False`` for a store that
  cannot delete sessions; its ``prune()`` must raise ``TypeError``.

Rows reach a backend already encoded: the suite encodes them with the backend's own ``codec``,
as the runtime does. This module imports pytest; ``import jeevesagent.runtime`` does not import
it (pytest comes with the ``test`` extra).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest

from ._errors import SessionBusyError, StoreClosedError
from ._journal.backend import (
    STEP,
    STREAM,
    Fenced,
    JournalBackend,
    JournalEntry,
    PruneResult,
    SessionInfo,
)
from ._journal.conformance import (
    LIVE,
    A,
    B,
    BackendOpener,
    OpenedBackends,
    decode_row,
    journal_rows,
    payload,
    record,
    send,
    signal_key,
    step_value,
    wait_until_expired,
)
from ._journal.openchecks import OpenSessionChecks
from ._journal.sessionchecks import WorkflowSessionChecks
from ._journal.suspendchecks import SuspensionChecks
from ._journaled.replaycheck import ReplayCheckError, check_replay

__all__ = ["BackendOpener", "JournalBackendConformance", "ReplayCheckError", "check_replay"]

# JSON data, so that a backend configured with the JSON codec passes too.
VALUES: list[Any] = [None, 0, -1.5, "text", "", True, [], {}, [1, "x", None], {"a": {"b": [2]}}]


class JournalBackendConformance(WorkflowSessionChecks, SuspensionChecks, OpenSessionChecks):
    """The checks every ``JournalBackend`` must pass. Subclass it as ``Test...`` and override
    the ``open_backend`` fixture (see the module docstring)."""

    pytestmark = pytest.mark.anyio

    #: Backends opened on the same storage share it (False: the storage is the object itself).
    shared_storage: ClassVar[bool] = True
    #: ``prune()`` can delete sessions (False: it must raise ``TypeError``).
    can_prune: ClassVar[bool] = True

    # -- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture
    def open_backend(self) -> BackendOpener:
        """Override: return a function that opens a backend on this test's fresh storage."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the open_backend fixture: return a function "
            "that opens your backend on one fresh, empty storage per test"
        )

    @pytest.fixture
    async def opened_backends(self, open_backend: BackendOpener) -> AsyncIterator[OpenedBackends]:
        opened = OpenedBackends(open_backend)
        try:
            yield opened
        finally:
            await opened.aclose()

    @pytest.fixture
    async def backend(self, opened_backends: OpenedBackends) -> JournalBackend:
        """The backend under test, on fresh storage."""
        return await opened_backends.open()

    @pytest.fixture
    async def other(
        self, backend: JournalBackend, opened_backends: OpenedBackends
    ) -> JournalBackend:
        """A second backend opened on the same storage as ``backend`` (another process would
        open one like it)."""
        return await opened_backends.open()

    async def test_open_backend_shares_storage_as_declared(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        if self.shared_storage:
            assert other is not backend, (
                "open_backend() returned the same object twice; with shared_storage = True it "
                "must open a new backend on the same storage (else set shared_storage = False)"
            )
        else:
            assert other is backend, (
                "shared_storage = False: the storage lives in the backend object, so "
                "open_backend() must return the same object for the same storage"
            )

    # -- the five published methods -------------------------------------------------------------
    async def test_step_values_round_trip(self, backend: JournalBackend) -> None:
        before = time.time()
        for i, value in enumerate(VALUES):
            await backend.put_step("s", f"k{i}", value)
        for i, value in enumerate(VALUES):
            entry = await backend.get_step("s", f"k{i}")
            assert isinstance(entry, JournalEntry), f"value {value!r} was not recorded"
            assert entry.value == value
            assert type(entry.value) is type(value)
            assert isinstance(entry.created_at, float)
            assert before - 5 <= entry.created_at <= time.time() + 5, "created_at: epoch seconds"
        assert await backend.get_step("s", "missing") is None
        assert await backend.get_step("other session", "k0") is None

    async def test_second_put_step_keeps_the_first_value(self, backend: JournalBackend) -> None:
        await backend.put_step("s", "k", "first")
        first = await backend.get_step("s", "k")
        await backend.put_step("s", "k", "second")
        await backend.put_step("s", "none", None)
        await backend.put_step("s", "none", "not None")
        assert await backend.get_step("s", "k") == first
        assert await step_value(backend, "s", "none") is None

    async def test_stream_chunks_round_trip(self, backend: JournalBackend) -> None:
        streams: list[list[Any]] = [[], [None], ["a", {"b": 1}, 3, None]]
        for i, chunks in enumerate(streams):
            await backend.put_stream("s", f"k{i}", chunks)
        for i, chunks in enumerate(streams):
            assert await backend.get_stream("s", f"k{i}") == chunks
        await backend.put_stream("s", "k2", ["second"])
        assert await backend.get_stream("s", "k2") == streams[2], "a second put keeps the first"
        assert await backend.get_stream("s", "missing") is None

    async def test_steps_streams_and_sessions_are_separate(self, backend: JournalBackend) -> None:
        await backend.put_step("s", "k", "step")
        assert await backend.get_stream("s", "k") is None
        await backend.put_stream("s", "k", ["stream"])
        await backend.put_step("t", "k", "other session")
        assert await step_value(backend, "s", "k") == "step"
        assert await backend.get_stream("s", "k") == ["stream"]
        assert await step_value(backend, "t", "k") == "other session"
        assert await backend.get_stream("t", "k") is None

    async def test_published_methods_across_backends(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await backend.put_step("s", "k", {"v": 1})
        await other.put_step("s", "k", {"v": 2})
        await other.put_stream("s", "k", [1, 2])
        assert await step_value(other, "s", "k") == {"v": 1}
        assert await backend.get_stream("s", "k") == [1, 2]

    # -- append (group commit) and load_session --------------------------------------------------
    async def test_append_then_load_session(self, backend: JournalBackend) -> None:
        steps = {f"k{i}": v for i, v in enumerate(VALUES)}
        streams = {"c0": [], "c1": ["a", None]}
        records = [record(backend, "s", k, v) for k, v in steps.items()]
        records += [record(backend, "s", k, v, STREAM) for k, v in streams.items()]
        records.append(record(backend, "t", "k0", "other session"))
        assert await backend.append(records) == {}
        journal = await backend.load_session("s")
        if journal.complete:
            assert sorted(journal.steps) == sorted(steps)
            assert sorted(journal.streams) == sorted(streams)
        rows = await journal_rows(backend, "s", STEP, list(steps))
        assert {k: decode_row(backend, "s", k, r) for k, r in rows.items()} == steps
        for row in rows.values():
            assert abs(row.created_at - records[0].created_at) < 5, "created_at: epoch seconds"
        rows = await journal_rows(backend, "s", STREAM, list(streams))
        assert {k: decode_row(backend, "s", k, r, STREAM) for k, r in rows.items()} == streams
        for row in rows.values():
            # 0.0: unknown (a five-method store's get_stream does not say when it was recorded)
            recent = abs(row.created_at - records[0].created_at) < 5
            assert recent or row.created_at == 0.0, "created_at: epoch seconds, or 0.0 unknown"
        empty = await backend.load_session("nobody")
        assert (empty.steps, empty.streams) == ({}, {})

    async def test_append_reports_the_first_row_on_conflict(self, backend: JournalBackend) -> None:
        assert await backend.append([record(backend, "s", "k", "first")]) == {}
        assert await backend.append([record(backend, "s", "c", ["first"], STREAM)]) == {}
        conflicts = await backend.append(
            [
                record(backend, "s", "k", "second"),
                record(backend, "s", "new", "new"),
                record(backend, "s", "c", ["second"], STREAM),
            ]
        )
        assert set(conflicts) == {("s", STEP, "k"), ("s", STREAM, "c")}
        assert decode_row(backend, "s", "k", conflicts[("s", STEP, "k")]) == "first"
        assert decode_row(backend, "s", "c", conflicts[("s", STREAM, "c")], STREAM) == ["first"]
        assert await step_value(backend, "s", "k") == "first"
        assert await step_value(backend, "s", "new") == "new"

    async def test_append_duplicate_key_in_one_batch(self, backend: JournalBackend) -> None:
        conflicts = await backend.append(
            [record(backend, "s", "k", "first"), record(backend, "s", "k", "second")]
        )
        assert await step_value(backend, "s", "k") == "first"
        assert decode_row(backend, "s", "k", conflicts[("s", STEP, "k")]) == "first"

    async def test_concurrent_appends_all_commit(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        async def write(target: JournalBackend, i: int) -> None:
            rows = [record(target, f"s{i % 7}", f"k{i}.{j}", [i, j]) for j in range(i % 3 + 1)]
            assert await target.append(rows) == {}

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(write, backend if i % 2 else other, i)
        for i in range(60):
            for j in range(i % 3 + 1):
                assert await step_value(backend, f"s{i % 7}", f"k{i}.{j}") == [i, j]

    async def test_concurrent_appends_of_one_key_agree(self, backend: JournalBackend) -> None:
        results: dict[int, Any] = {}

        async def write(i: int) -> None:
            conflicts = await backend.append([record(backend, "s", "k", i)])
            row = conflicts.get(("s", STEP, "k"))
            results[i] = i if row is None else decode_row(backend, "s", "k", row)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(write, i)
        kept = await step_value(backend, "s", "k")
        assert kept in range(20)
        assert results == dict.fromkeys(range(20), kept), "every writer adopts one value"

    # -- fencing ----------------------------------------------------------------------------------
    async def test_append_is_fenced_by_another_owner(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await backend.claim("s", A, LIVE)
        with pytest.raises(SessionBusyError):
            await other.append([record(other, "s", "k", "B's")], owners={"s": B})
        assert await backend.get_step("s", "k") is None, "a fenced write inserts nothing"
        assert await backend.append([record(backend, "s", "k", "A's")], owners={"s": A}) == {}
        assert await step_value(other, "s", "k") == "A's"

    async def test_append_is_fenced_without_an_owner(self, backend: JournalBackend) -> None:
        with pytest.raises(SessionBusyError):  # no sessions row at all
            await backend.append([record(backend, "s", "k", 1)], owners={"s": A})
        await backend.claim("s", A, LIVE)
        await backend.release("s", A, "completed", 0)
        with pytest.raises(SessionBusyError):  # released: nobody owns it
            await backend.append([record(backend, "s", "k", 1)], owners={"s": A})
        assert await backend.get_step("s", "k") is None

    async def test_write_rows_fenced_names_sessions_and_inserts_nothing(
        self, backend: JournalBackend
    ) -> None:
        await backend.claim("mine", A, LIVE)
        await backend.claim("theirs", B, LIVE)
        records = [record(backend, "mine", "k", 1), record(backend, "theirs", "k", 2)]
        with pytest.raises(Fenced) as caught:
            await backend.write_rows(records, {"mine": A, "theirs": A})
        assert caught.value.session_ids == {"theirs"}
        assert await backend.get_step("mine", "k") is None, "nothing of a fenced batch is kept"
        assert await backend.get_step("theirs", "k") is None

    # -- claims and leases ------------------------------------------------------------------------
    async def test_claim_a_free_session(self, backend: JournalBackend) -> None:
        before = await backend.now()
        info = await backend.claim("s", A, 30.0)
        after = await backend.now()
        assert isinstance(info, SessionInfo)
        assert (info.session_id, info.status, info.owner) == ("s", "running", A)
        assert info.lease_expires is not None
        assert before + 30 - 0.01 <= info.lease_expires <= after + 30 + 0.01, (
            "the lease is measured on the backend's clock, now()"
        )
        assert info.created_at <= info.updated_at
        again = await backend.claim("s", A, 60.0)
        assert again.owner == A
        assert again.lease_expires is not None
        assert again.lease_expires >= info.lease_expires + 29, "the same owner renews its claim"

    async def test_claim_refused_while_another_owner_is_live(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        held = await backend.claim("s", A, LIVE)
        refused = await other.claim("s", B, LIVE)
        assert (refused.owner, refused.lease_expires) == (A, held.lease_expires)
        assert await other.renew("s", B, LIVE) is False
        await other.release("s", B, "failed", 5)
        assert [(i.owner, i.status) for i in await backend.list_sessions()] == [(A, "running")]
        assert await backend.renew("s", A, LIVE) is True

    async def test_expired_lease_can_be_claimed(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        held = await backend.claim("s", A, 0.2)
        assert held.owner == A
        await wait_until_expired(backend, held.lease_expires)
        taken = await other.claim("s", B, LIVE)
        assert (taken.owner, taken.status) == (B, "running")
        assert await backend.renew("s", A, LIVE) is False, "renew is False once the claim is lost"
        await backend.release("s", A, "completed", 1)  # not the holder: changes nothing
        assert [(i.owner, i.status) for i in await other.list_sessions()] == [(B, "running")]
        assert await other.renew("s", B, LIVE) is True

    async def test_release_records_how_the_session_ended(self, backend: JournalBackend) -> None:
        await backend.claim("s", A, LIVE)
        await backend.release("s", A, "completed", 3)
        [info] = await backend.list_sessions()
        assert (info.status, info.owner, info.lease_expires, info.steps) == (
            "completed",
            None,
            None,
            3,
        )
        assert await backend.renew("s", A, LIVE) is False, "a released claim cannot be renewed"
        assert (await backend.claim("s", B, LIVE)).owner == B, "a released session is free"

    async def test_list_sessions_filters_by_status_oldest_first(
        self, backend: JournalBackend
    ) -> None:
        for sid in ("s1", "s2", "s3", "s4"):
            await backend.claim(sid, A, LIVE)
            await anyio.sleep(0.01)
        await backend.release("s2", A, "completed", 0)
        await backend.release("s3", A, "failed", 0)
        await backend.release("s4", A, "completed", 0)
        assert [i.session_id for i in await backend.list_sessions()] == ["s1", "s2", "s3", "s4"]
        assert [i.session_id for i in await backend.list_sessions("completed")] == ["s2", "s4"]
        assert [i.session_id for i in await backend.list_sessions("running")] == ["s1"]
        assert await backend.list_sessions("cancelled") == []

    async def test_now_is_a_clock(self, backend: JournalBackend) -> None:
        first = await backend.now()
        await anyio.sleep(0.01)
        second = await backend.now()
        assert isinstance(first, float)
        assert first < second

    # -- the mailbox ------------------------------------------------------------------------------
    async def test_signals_are_fifo_per_name(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        assert (await backend.pending_signals("s"), await backend.pending_names("s")) == (0, [])
        for name, value in [("b", "x"), ("a", 1), ("a", None), ("a", 3)]:
            await send(other, "s", name, value)
        await send(other, "t", "a", "other session")
        assert await backend.pending_signals("s") == 4
        assert await backend.pending_names("s") == ["a", "b"]
        await backend.claim("s", A, LIVE)
        for i, value in enumerate([1, None, 3]):
            row = await backend.take_signal("s", "a", signal_key("a", i), A)
            assert payload(backend, "s", "a", row) == value
        assert await backend.take_signal("s", "a", signal_key("a", 3), A) is None
        assert (await backend.pending_signals("s"), await backend.pending_names("s")) == (1, ["b"])
        rows = await journal_rows(backend, "s", STEP, [signal_key("a", i) for i in range(4)])
        assert [payload(backend, "s", "a", r) for r in rows.values()] == [1, None, 3]
        receipt = await step_value(other, "s", signal_key("a", 0))
        assert receipt == 1, "a receipt is an ordinary journal row"
        assert await backend.pending_signals("t") == 1

    async def test_take_signal_with_a_journaled_key_takes_nothing(
        self, backend: JournalBackend
    ) -> None:
        await send(backend, "s", "a", 1)
        await send(backend, "s", "a", 2)
        first = await backend.take_signal("s", "a", signal_key("a", 0), None)
        assert payload(backend, "s", "a", first) == 1
        again = await backend.take_signal("s", "a", signal_key("a", 0), None)
        assert payload(backend, "s", "a", again) == 1
        assert await backend.pending_signals("s") == 1
        await backend.append([record(backend, "s", signal_key("a", 5), "journaled")])
        kept = await backend.take_signal("s", "a", signal_key("a", 5), None)
        assert payload(backend, "s", "a", kept) == "journaled"
        assert await backend.pending_signals("s") == 1

    async def test_take_signal_without_a_key_only_removes(self, backend: JournalBackend) -> None:
        await send(backend, "s", "a", "first")
        await send(backend, "s", "a", "second")
        row = await backend.take_signal("s", "a", None, None)
        assert payload(backend, "s", "a", row) == "first"
        assert await backend.pending_signals("s") == 1
        journal = await backend.load_session("s")
        assert (journal.steps, journal.streams) == ({}, {})
        assert await backend.take_signal("s", "nothing", None, None) is None

    async def test_take_signal_is_fenced(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await backend.claim("s", A, LIVE)
        await send(backend, "s", "a", 1)
        await send(backend, "unowned", "a", 1)
        with pytest.raises(Fenced):
            await other.take_signal("s", "a", signal_key("a", 0), B)
        with pytest.raises(Fenced):
            await other.take_signal("unowned", "a", signal_key("a", 0), B)
        assert await backend.pending_signals("s") == 1, "a fenced take changes nothing"
        assert await backend.pending_signals("unowned") == 1
        assert await backend.get_step("s", signal_key("a", 0)) is None
        row = await backend.take_signal("s", "a", signal_key("a", 0), A)
        assert payload(backend, "s", "a", row) == 1

    async def test_take_signal_nowait_takes_the_oldest_or_nothing(
        self, backend: JournalBackend
    ) -> None:
        await send(backend, "s", "a", 1)
        await send(backend, "s", "a", 2)
        row = backend.take_signal_nowait("s", "a")
        if row is None:  # a backend with I/O cannot take without awaiting
            assert await backend.pending_signals("s") == 2
        else:
            assert payload(backend, "s", "a", row) == 1
            assert await backend.pending_signals("s") == 1
        assert backend.take_signal_nowait("s", "nothing") is None

    async def test_watch_reports_whether_it_pushes(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        sid = f"s-{uuid.uuid4().hex}"  # a database-wide channel may carry other tests' notices
        woken = anyio.Event()
        threads: set[int] = set()

        def wake(session_id: str) -> None:
            threads.add(threading.get_ident())
            if session_id == sid:
                woken.set()

        pushes = await backend.watch(wake)
        assert isinstance(pushes, bool)
        assert isinstance(await backend.watch(wake), bool), "watch is idempotent per wake"
        if pushes:
            await send(other, sid, "a", 1)
            with anyio.fail_after(10):
                await woken.wait()
            assert threads == {threading.get_ident()}, "wake runs in the event loop's thread"

    # -- prune ------------------------------------------------------------------------------------
    async def test_prune_or_refuse(self, backend: JournalBackend) -> None:
        if self.can_prune:
            assert await backend.prune(sessions=["nobody"]) == PruneResult([], [])
        else:
            with pytest.raises(TypeError):
                await backend.prune(sessions=["nobody"])

    async def test_prune_checks_its_arguments(self, backend: JournalBackend) -> None:
        # Checked before anything is deleted, whether or not the backend can prune.
        bad: list[dict[str, Any]] = [{}, {"status": "unknown"}, {"older_than": -1.0}]
        for arguments in bad:
            with pytest.raises(ValueError):  # noqa: PT011 - the message varies per backend
                await backend.prune(**arguments)

    async def _sessions_to_prune(self, backend: JournalBackend, other: JournalBackend) -> None:
        """``done`` and ``failed`` ended, ``live`` is held, ``expired`` lost its lease, ``orphan``
        has journal rows and a signal but no sessions row."""
        for sid, status in [("done", "completed"), ("failed", "failed")]:
            await backend.claim(sid, A, LIVE)
            await backend.append([record(backend, sid, "k", sid)], owners={sid: A})
            await send(backend, sid, "a", 1)
            await backend.release(sid, A, status, 1)
        await other.claim("live", B, LIVE)
        await other.append([record(other, "live", "k", "live")], owners={"live": B})
        expired = await backend.claim("expired", A, 0.2)
        await backend.append([record(backend, "orphan", "k", "orphan")])
        await send(backend, "orphan", "a", 1)
        await wait_until_expired(backend, expired.lease_expires)

    async def test_prune_filters_and_spares_live_sessions(
        self, backend: JournalBackend, other: JournalBackend
    ) -> None:
        await self._sessions_to_prune(backend, other)
        if not self.can_prune:
            with pytest.raises(TypeError):
                await backend.prune(sessions=["done", "failed", "expired", "orphan"])
            for sid in ["done", "failed", "orphan"]:
                assert await other.get_step(sid, "k") is not None, f"{sid}: nothing was deleted"
            return
        everyone = ["done", "expired", "failed", "live", "orphan"]
        assert await backend.prune(status="completed", dry_run=True) == PruneResult(["done"], [])
        assert await backend.get_step("done", "k") is not None, "dry_run deletes nothing"
        assert await backend.prune(status="running", dry_run=True) == PruneResult(
            ["expired"], ["live"]
        )
        assert await backend.prune(sessions=everyone, older_than=3600) == PruneResult([], [])
        assert await backend.prune(status=["completed", "failed"]) == PruneResult(
            ["done", "failed"], []
        )
        assert await backend.prune(sessions=everyone) == PruneResult(
            ["expired", "orphan"], ["live"]
        )
        for sid in ["done", "failed", "expired", "orphan"]:
            assert await other.get_step(sid, "k") is None, f"{sid}: its journal rows stay"
            assert await other.pending_signals(sid) == 0, f"{sid}: its signals stay"
        assert [i.session_id for i in await other.list_sessions()] == ["live"]
        assert await step_value(other, "live", "k") == "live"

    async def test_prune_by_age(self, backend: JournalBackend) -> None:
        await backend.claim("old", A, LIVE)
        await backend.release("old", A, "completed", 0)
        if not self.can_prune:
            with pytest.raises(TypeError):
                await backend.prune(older_than=0)
            return
        await anyio.sleep(0.5)
        await backend.claim("new", A, LIVE)
        await backend.release("new", A, "completed", 0)
        assert await backend.prune(older_than=0.25) == PruneResult(["old"], [])
        assert [i.session_id for i in await backend.list_sessions()] == ["new"]

    # -- close ------------------------------------------------------------------------------------
    async def test_calls_after_aclose_raise_store_closed(self, backend: JournalBackend) -> None:
        await backend.put_step("s", "k", 1)
        await backend.aclose()
        assert backend.closed
        await backend.aclose()  # idempotent
        r = record(backend, "s", "k2", 2)
        calls: dict[str, Any] = {
            "get_step": lambda: backend.get_step("s", "k"),
            "put_step": lambda: backend.put_step("s", "k2", 2),
            "get_stream": lambda: backend.get_stream("s", "k"),
            "put_stream": lambda: backend.put_stream("s", "k2", [2]),
            "load_session": lambda: backend.load_session("s"),
            "append": lambda: backend.append([r]),
            "send_signal": lambda: send(backend, "s", "a", 1),
            "take_signal": lambda: backend.take_signal("s", "a", None, None),
            "pending_signals": lambda: backend.pending_signals("s"),
            "pending_names": lambda: backend.pending_names("s"),
            "claim": lambda: backend.claim("s", A, LIVE),
            "renew": lambda: backend.renew("s", A, LIVE),
            "release": lambda: backend.release("s", A, "completed", 0),
            "list_sessions": lambda: backend.list_sessions(),
            "create_session": lambda: backend.create_session("s", "wf", r),
            "request_cancel": lambda: backend.request_cancel("s"),
        }
        if self.can_prune:
            calls["prune"] = lambda: backend.prune(sessions=["s"])
        working = []
        for name, call in calls.items():
            try:
                await call()
            except StoreClosedError:
                continue
            working.append(name)
        assert not working, f"these still worked after aclose(): {working}"

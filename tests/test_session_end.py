"""A workflow session's end: its outcome (``w:result`` or ``w:failure:N``) and its status commit
together, in one durable commit (the store's ``finish``), so ``rt.run`` waits for one fsync at the
end, not two, and no reader sees ``completed`` without the result. A failed end leaves the
session resumable; an owner that lost its claim writes nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from jeevesagent.runtime import JournaledRuntime, current_runtime, workflow
from jeevesagent.runtime._backends.sqlite import SqliteJournalStore
from jeevesagent.runtime._errors import SessionBusyError, StoreError
from jeevesagent.runtime._journal.backend import STEP, JournalBackend

from .conftest import StoreFactory

#: Per test: the store calls made so far, and where each body's last step ended in that list.
calls: list[str] = []
marks: list[int] = []


@workflow(name="test.session_end.add")
async def add(n: int) -> int:
    rt = current_runtime()
    a = await rt.step("a", lambda: n + 1)
    b = await rt.step("b", lambda: a * 2)
    marks.append(len(calls))
    if n < 0:
        raise ValueError(f"negative: {n}")
    return b


def count_calls(store: JournalBackend) -> None:
    """Note every write of the store that the runtime calls, by name."""
    for name in ("append", "release", "release_lazy", "finish", "suspend", "create_session"):
        real = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _real: Any = real, **kw: Any) -> Any:
            calls.append(_name)
            return await _real(*args, **kw)

        setattr(store, name, counted)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()
    marks.clear()


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("durability", ["commit", "buffered"])
@pytest.mark.parametrize("n", [20, -1], ids=["completed", "failed"])
async def test_a_workflow_ends_with_one_store_call(
    store_factory: StoreFactory, n: int, durability: Any
) -> None:
    """Buffered: the steps still buffered commit in the same call."""
    store = await store_factory.new()
    count_calls(store)
    async with JournaledRuntime(store, durability=durability, flush_interval=60) as rt:
        if n >= 0:
            assert await rt.run(add, "wf", n) == 42
        else:
            with pytest.raises(ValueError, match="negative"):
                await rt.run(add, "wf", n)
        assert calls[marks[0] :] == ["finish"], "the outcome and the status: one call"
        info = await store.session_info("wf")
        assert info is not None
        status = "completed" if n >= 0 else "failed"
        assert (info.status, info.owner, info.steps) == (status, None, 4), "args, a, b, outcome"
        key = "w:result" if n >= 0 else "w:failure:0"
        assert await store.load_row("wf", STEP, key) is not None
        if n >= 0:
            assert await rt.result("wf") == 42
        else:
            with pytest.raises(ValueError, match="negative"):
                await rt.result("wf")


class Transactions:
    """The durable commits of a SQLite store's connection, from its statement trace: a COMMIT,
    or a write outside a transaction (autocommitted), while ``synchronous`` is ``FULL``."""

    def __init__(self) -> None:
        self.durable = 0
        self.full = True
        self.in_transaction = False

    def __call__(self, sql: str) -> None:  # runs on the store's thread
        words = sql.strip().upper().split()
        if not words:
            return
        if words[:2] == ["PRAGMA", "SYNCHRONOUS"]:
            self.full = words[-1] in ("FULL", "2")
        elif words[0] == "BEGIN":
            self.in_transaction = True
        elif words[0] in ("COMMIT", "END", "ROLLBACK") and words[:2] != ["ROLLBACK", "TO"]:
            self.durable += words[0] != "ROLLBACK" and self.full
            self.in_transaction = False
        elif words[0] in ("INSERT", "UPDATE", "DELETE") and not self.in_transaction:
            self.durable += self.full


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_sqlite_commits_a_workflows_end_once(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in SQLite itself: the body's last step ends, then one durable transaction."""
    trace = Transactions()
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)  # the store's connection, made on its thread
    store = await store_factory.new()
    assert isinstance(store, SqliteJournalStore)
    at_last_step: list[int] = []

    @workflow(name="test.session_end.sqlite")
    async def body(n: int) -> int:
        rt = current_runtime()
        a = await rt.step("a", lambda: n + 1)
        at_last_step.append(trace.durable)
        return a

    async with JournaledRuntime(store) as rt:
        assert await rt.run(body, "wf", 1) == 2
        assert trace.durable - at_last_step[0] == 1, "one durable commit ends the session"
        assert await rt.run(body, "wf", 1) == 2
    info = await store.session_info("wf")
    assert info is not None
    assert (info.status, info.owner) == ("completed", None)


async def test_a_failed_end_leaves_the_session_resumable(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    real = store.finish
    ran: list[str] = []

    async def broken(*args: Any) -> Any:
        raise StoreError("the disk is full", session_id="wf")

    @workflow(name="test.session_end.resumable")
    async def body(n: int) -> int:
        return await current_runtime().step("a", lambda: ran.append("a") or n + 1)

    store.finish = broken  # type: ignore[method-assign]
    async with JournaledRuntime(store) as rt:
        with pytest.raises(StoreError, match="the disk is full"):
            await rt.run(body, "wf", 1)
        info = await store.session_info("wf")
        assert info is not None
        assert (info.status, info.owner) == ("interrupted", None), "resumable at once"
        assert await store.load_row("wf", STEP, "w:result") is None
        store.finish = real  # type: ignore[method-assign]
        assert await rt.run(body, "wf", 1) == 2
        assert ran == ["a"], "the recorded step replays"
        assert await rt.result("wf") == 2


async def test_an_owner_that_lost_its_claim_records_no_outcome(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()

    @workflow(name="test.session_end.fenced")
    async def body(n: int) -> int:
        rt = current_runtime()
        a = await rt.step("a", lambda: n + 1)
        # Another runtime takes the session over (as after an expired lease).
        await store.release_lazy("wf", rt.owner_id, "interrupted", 2)
        assert (await store.claim("wf", "intruder", 600)).owner == "intruder"
        return a

    async with JournaledRuntime(store) as rt:
        with pytest.raises(SessionBusyError, match="no longer holds"):
            await rt.run(body, "wf", 1)
    assert await store.load_row("wf", STEP, "w:result") is None, "nothing written"
    info = await store.session_info("wf")
    assert info is not None
    assert (info.status, info.owner) == ("running", "intruder")

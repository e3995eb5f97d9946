"""Store-level primitives of durable coordination, on every store: the signal mailbox (FIFO, kept
across store objects, consumed atomically with its journaled receipt), the sessions table (claim,
renew, release, expiry, status) and fencing of writes from a runtime that lost its claim.
"""

from __future__ import annotations

import time

import anyio
import pytest

from jeevesagent.runtime import SessionBusyError
from jeevesagent.runtime._journal.backend import STEP, Fenced, Record

from .conftest import StoreFactory


async def test_mailbox_is_fifo_per_name_and_kept_across_store_objects(
    store_factory: StoreFactory,
) -> None:
    sender, receiver = await store_factory.new(), await store_factory.new()
    for i in range(3):
        await sender.send_signal("s", "approve", f"yes-{i}".encode(), time.time())
    await sender.send_signal("s", "other", b"o", time.time())
    assert await receiver.pending_signals("s") == 4
    taken = [await receiver.take_signal("s", "approve", f"g:approve:{i}", None) for i in range(3)]
    assert [row.data for row in taken if row] == [b"yes-0", b"yes-1", b"yes-2"]
    assert await receiver.take_signal("s", "approve", "g:approve:3", None) is None
    assert await receiver.pending_signals("s") == 1


async def test_taking_a_signal_journals_its_receipt_in_the_same_transaction(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    await store.send_signal("s", "go", b"payload", time.time())
    row = await store.take_signal("s", "go", "g:go:0", None)
    assert row is not None
    assert row.data == b"payload"
    journal = await (await store_factory.new()).load_session("s")
    assert journal.steps["g:go:0"].data == b"payload"
    # Asking again for a receipt that exists returns it and takes nothing more.
    await store.send_signal("s", "go", b"second", time.time())
    again = await store.take_signal("s", "go", "g:go:0", None)
    assert again is not None
    assert again.data == b"payload"
    assert await store.pending_signals("s") == 1


async def test_taking_without_a_key_only_removes_the_signal(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    await store.send_signal("s", "go", b"x", time.time())
    row = await store.take_signal("s", "go", None, None)
    assert row is not None
    assert row.data == b"x"
    assert (await store.load_session("s")).steps == {}
    assert await store.pending_signals("s") == 0


async def test_a_claim_is_exclusive_until_released(store_factory: StoreFactory) -> None:
    a, b = await store_factory.new(), await store_factory.new()
    got = await a.claim("s", "owner-a", 30)
    assert (got.owner, got.status) == ("owner-a", "running")
    refused = await b.claim("s", "owner-b", 30)
    assert refused.owner == "owner-a"
    assert await a.renew("s", "owner-a", 30)
    assert not await b.renew("s", "owner-b", 30)
    await a.release("s", "owner-a", "completed", 7)
    [info] = await b.list_sessions("completed")
    assert (info.session_id, info.owner, info.steps, info.lease_expires) == ("s", None, 7, None)
    taken = await b.claim("s", "owner-b", 30)
    assert (taken.owner, taken.status) == ("owner-b", "running")
    assert [i.session_id for i in await a.list_sessions("running")] == ["s"]


async def test_an_expired_claim_can_be_taken_over(store_factory: StoreFactory) -> None:
    a, b = await store_factory.new(), await store_factory.new()
    await a.claim("s", "owner-a", 0.2)
    assert (await b.claim("s", "owner-b", 30)).owner == "owner-a"
    await anyio.sleep(0.3)
    assert (await b.claim("s", "owner-b", 30)).owner == "owner-b"
    assert not await a.renew("s", "owner-a", 30)  # the old owner learns it lost the claim


async def test_writes_of_a_runtime_that_lost_its_claim_are_refused(
    store_factory: StoreFactory,
) -> None:
    a, b = await store_factory.new(), await store_factory.new()
    await a.claim("s", "owner-a", 0.2)
    await anyio.sleep(0.3)
    await b.claim("s", "owner-b", 30)
    record = Record("s", STEP, "k", b"late", time.time())
    with pytest.raises(SessionBusyError) as info:
        await a.append([record], {"s": "owner-a"})
    assert info.value.session_id == "s"
    await b.append([Record("s", STEP, "k", b"owner", time.time())], {"s": "owner-b"})
    journal = await (await store_factory.new()).load_session("s")
    assert journal.steps["k"].data == b"owner"
    with pytest.raises(Fenced):
        await a.write_rows([record], {"s": "owner-a"})


async def test_a_fenced_take_leaves_the_signal_in_the_mailbox(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    await store.claim("s", "owner-b", 30)
    await store.send_signal("s", "go", b"x", time.time())
    with pytest.raises(Fenced):
        await store.take_signal("s", "go", "g:go:0", "owner-a")
    assert await store.pending_signals("s") == 1
    assert (await store.load_session("s")).steps == {}


async def test_group_commit_refuses_only_the_fenced_session(store_factory: StoreFactory) -> None:
    store = await store_factory.new()
    await store.claim("mine", "me", 30)
    await store.claim("theirs", "them", 30)
    outcome: dict[str, BaseException | None] = {}

    async def write(session: str) -> None:
        try:
            await store.append([Record(session, STEP, "k", b"v", time.time())], {session: "me"})
            outcome[session] = None
        except SessionBusyError as exc:
            outcome[session] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "mine")
        tg.start_soon(write, "theirs")
    assert outcome["mine"] is None
    assert isinstance(outcome["theirs"], SessionBusyError)
    assert "k" in (await store.load_session("mine")).steps
    assert (await store.load_session("theirs")).steps == {}

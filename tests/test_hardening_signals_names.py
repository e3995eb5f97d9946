"""Defects found by adversarial testing (issue 10), continued: signal receives that return no
payload (a timeout, "nothing at hand") are journaled so a replay takes the same branch; names
and ids no store can hold are refused before anything runs, the same way on every store.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from jeevesagent.runtime import InvalidNameError, JournaledRuntime, SqliteJournalStore
from jeevesagent.runtime._core.values import MAGIC

from .conftest import StoreFactory

POLL = 0.02
KEY = "k" * 32


def runtime(store: Any) -> JournaledRuntime:
    return JournaledRuntime(store, poll_interval=POLL)


class Crash(Exception):
    """Stands for the process dying after the branch's side effect."""


# -- 5. receive outcomes that are not payloads -------------------------------------------------


async def test_a_timed_out_wait_replays_as_a_timeout_even_after_a_late_approval(
    store_factory: StoreFactory,
) -> None:
    effects: list[str] = []

    async def agent(rt: JournaledRuntime, crash: bool) -> str:
        async with rt.session("trip"):
            try:
                await rt.wait_for_signal("trip", "approve", timeout=0.05)
                branch = "approved"
            except TimeoutError:
                branch = "escalated"
            await rt.step(branch, effects.append, branch)
            if crash:
                raise Crash
            # The late approval is not lost: the session's next wait receives it.
            late = await rt.wait_for_signal("trip", "approve", timeout=5)
            return f"{branch}, then {late}"

    async with runtime(await store_factory.new()) as rt:
        with pytest.raises(Crash):
            await agent(rt, crash=True)
        await rt.signal("trip", "approve", "yes")  # the approval comes late
    async with runtime(await store_factory.new()) as rt:
        assert await agent(rt, crash=False) == "escalated, then yes"
    assert effects == ["escalated"]  # one branch, once


async def test_a_poll_that_found_nothing_replays_as_nothing(store_factory: StoreFactory) -> None:
    effects: list[str] = []

    async def agent(rt: JournaledRuntime, crash: bool) -> None:
        async with rt.session("s"):
            got = rt.poll_signal("s", "cancel")
            branch = "go on" if got is None else "cancelled"
            await rt.step(branch, effects.append, branch)
            if crash:
                raise Crash
            assert rt.poll_signal("s", "cancel") == "now"  # there for the next receive

    async with runtime(await store_factory.new()) as rt:
        with pytest.raises(Crash):
            await agent(rt, crash=True)
        await rt.signal("s", "cancel", "now")
    async with runtime(await store_factory.new()) as rt:
        await agent(rt, crash=False)
    assert effects == ["go on"]


async def test_a_nothing_outcome_is_committed_with_the_sessions_next_record(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with runtime(store) as rt, rt.session("s"):
        assert rt.poll_signal("s", "x") is None
        await rt.step("after", lambda: 1)
        journal = await store.load_session("s")
        assert "o:x:0" in journal.steps  # committed together with the step after it


async def test_receive_outcomes_are_signed_when_the_journal_is(tmp_path: Any) -> None:
    path = str(tmp_path / "signed.sqlite3")
    async with SqliteJournalStore(path, signing_key=KEY) as store:
        async with runtime(store) as rt, rt.session("s"):
            assert rt.poll_signal("s", "x") is None
            with pytest.raises(TimeoutError):
                await rt.wait_for_signal("s", "x", timeout=0.01)
        journal = await store.load_session("s")
        assert journal.steps["o:x:0"].data.startswith(MAGIC)
        assert journal.steps["o:x:1"].data.startswith(MAGIC)


# -- 8. names and ids no store can hold ---------------------------------------------------------

BAD_NAMES: list[Any] = ["", "nul\x00byte", "lone \udc80 surrogate", "x" * 2000, None, 42]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=["empty", "nul", "surrogate", "long", "none", "int"])
async def test_bad_names_are_refused_before_anything_runs(
    store_factory: StoreFactory, bad: Any
) -> None:
    store = await store_factory.new()
    ran: list[str] = []

    async def produce() -> Any:
        ran.append("stream")
        yield 1

    async with runtime(store) as rt:
        with pytest.raises(InvalidNameError) as caught:
            rt.session(bad)
        assert isinstance(caught.value, ValueError)
        for call in (
            lambda: rt.signal(bad, "go", 1),
            lambda: rt.signal("s", bad, 1),
            lambda: rt.wait_for_signal(bad, "go", timeout=0.01),
            lambda: rt.wait_for_signal("s", bad, timeout=0.01),
        ):
            with pytest.raises(InvalidNameError):
                await call()
        with pytest.raises(InvalidNameError):
            rt.poll_signal(bad, "go")
        async with rt.session("s"):
            with pytest.raises(InvalidNameError) as caught:
                await rt.step(bad, ran.append, "step")
            assert caught.value.session_id == "s"
            if isinstance(bad, str):  # None means "no key"; other values are str()-ed
                with pytest.raises(InvalidNameError):
                    await rt.step("ok", ran.append, "keyed", idempotency_key=bad)
            with pytest.raises(InvalidNameError):
                await rt.sleep(bad, 0)
            with pytest.raises(InvalidNameError):
                rt.stream_step(bad, produce)
        assert ran == []
        journal = await store.load_session("s")
        assert not journal.steps
        assert not journal.streams
        assert await store.pending_signals("s") == 0


async def test_one_bad_step_name_fails_only_its_own_session(store_factory: StoreFactory) -> None:
    """Twenty sessions commit at once (sharing group commits); one asks for a step name no
    store can hold. Only that call fails -- before its function runs -- and the others commit."""
    store = await store_factory.new()
    ran: list[int] = []
    outcome: dict[int, Any] = {}

    async with runtime(store) as rt:

        async def session(n: int) -> None:
            name = "bad\x00name" if n == 7 else "lone \udc80" if n == 13 else "step"
            try:
                async with rt.session(f"s{n}"):
                    outcome[n] = await rt.step(name, lambda: ran.append(n) or n)
            except InvalidNameError as exc:
                outcome[n] = exc

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(session, n)
    assert isinstance(outcome.pop(7), InvalidNameError)
    assert isinstance(outcome.pop(13), InvalidNameError)
    assert outcome == {n: n for n in range(20) if n not in (7, 13)}
    assert sorted(ran) == sorted(outcome)  # the refused steps' functions never ran
    for n in outcome:
        assert len((await store.load_session(f"s{n}")).steps) == 1


# -- a copied signed signal ----------------------------------------------------------------------


def sqlite_exec(path: str, sql: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


async def durable_exec(kind: str, target: str, sql: str) -> None:
    if kind == "sqlite":
        sqlite_exec(target, sql)
        return
    from .conftest import pg

    async def go(conn: Any) -> None:
        await conn.execute(sql)

    pg(target, go)


COPY_MAILBOX_ROW = (
    "INSERT INTO jrt_mailbox (session_id, name, payload, created_at) "
    "SELECT session_id, name, payload, created_at FROM jrt_mailbox"
)
COPY_RECEIPT = (
    "INSERT INTO jrt_journal (session_id, kind, key, value, created_at) "
    "SELECT session_id, kind, 'g:approve:1', value, created_at FROM jrt_journal "
    "WHERE key = 'g:approve:0'"
)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_a_copied_signed_signal_is_received_once(
    store_factory: StoreFactory, store_kind: str, store_target: str
) -> None:
    """Someone with write access copies a signed approval -- in the mailbox, then in the
    journal. Each copy verifies (the signature is genuine), but a session receives one send
    once: the copies are skipped, live and on replay."""
    async with runtime(await store_factory.new(signing_key=KEY)) as rt:
        await rt.signal("s", "approve", "yes")
    await durable_exec(store_kind, store_target, COPY_MAILBOX_ROW)
    store = await store_factory.new(signing_key=KEY)
    assert await store.pending_signals("s") == 2
    async with runtime(store) as rt, rt.session("s"):
        assert await rt.wait_for_signal("s", "approve", timeout=5) == "yes"
        with pytest.raises(TimeoutError):
            await rt.wait_for_signal("s", "approve", timeout=0.05)
    # The journal now holds the receipt and the skipped copy; copy the receipt once more.
    await durable_exec(
        store_kind, store_target, "DELETE FROM jrt_journal WHERE key <> 'g:approve:0'"
    )
    await durable_exec(store_kind, store_target, COPY_RECEIPT)
    async with runtime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s"):
        assert await rt.wait_for_signal("s", "approve", timeout=5) == "yes"
        with pytest.raises(TimeoutError):
            await rt.wait_for_signal("s", "approve", timeout=0.05)


async def test_two_sends_of_one_signed_payload_are_two_signals(
    store_factory: StoreFactory,
) -> None:
    async with runtime(await store_factory.new(signing_key=KEY)) as rt:
        await rt.signal("s", "vote", "yes")
        await rt.signal("s", "vote", "yes")
        async with rt.session("s"):
            assert await rt.wait_for_signal("s", "vote", timeout=5) == "yes"
            assert await rt.wait_for_signal("s", "vote", timeout=5) == "yes"


async def test_the_cli_preview_verifies_a_signed_signal_receipt(tmp_path: Any) -> None:
    from jeevesagent.runtime._core.values import JournalCodec, peek

    path = str(tmp_path / "signed.sqlite3")
    async with SqliteJournalStore(path, signing_key=KEY, codec="json") as store:
        async with runtime(store) as rt, rt.session("s"):
            await rt.signal("s", "approve", {"ok": True})
            assert await rt.wait_for_signal("s", "approve", timeout=5) == {"ok": True}
        row = (await store.load_session("s")).steps["g:approve:0"]
    seen = peek(row.data, JournalCodec("json", KEY), "s", 0, "g:approve:0", trust=False)
    assert (seen.signed, seen.verified, seen.value) == (True, True, {"ok": True})

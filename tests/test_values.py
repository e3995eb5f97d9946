"""Safe values: signed journals refuse rows they did not sign without decoding them, and the JSON
codec keeps journals readable by other tools. Every store, both event loops."""

from __future__ import annotations

import contextlib
import json
import pathlib
import pickle
import sqlite3
import time
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import (
    JournalCorruptError,
    JournaledRuntime,
    JournalIntegrityError,
    RetryPolicy,
    StepFailedError,
    ValueEncodingError,
    with_policy,
)
from jeevesagent.runtime._core.keys import fingerprint, signal_journal_key, step_journal_key
from jeevesagent.runtime._core.values import (
    MAGIC,
    NONCE_BYTES,
    NONCE_MARK,
    JournalCodec,
    peek,
    pickle_summary,
)
from jeevesagent.runtime._journal.backend import STEP, STREAM, JournalBackend, Row, SessionJournal

from .conftest import StoreFactory, _run_sql

KEY = "k" * 32
OTHER_KEY = "o" * 32


class Trace:
    """A pickle whose decoding leaves a visible trace: it creates the file at ``path``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def trace_pickle(path: pathlib.Path) -> bytes:
    return pickle.dumps(Trace(path))


def test_the_trace_pickle_really_leaves_a_trace(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "decoded"
    pickle.loads(trace_pickle(marker))
    assert marker.exists()


def key_of(name: str, *args: Any) -> str:
    return step_journal_key(name, fingerprint(args, {}))


async def plant(factory: StoreFactory, session_id: str, kind: int, key: str, data: bytes) -> None:
    """Write a row behind the runtime's back, as someone with access to the database would."""
    now = time.time()
    if factory.kind == "memory":
        memory = factory._memory
        assert memory is not None
        journal = memory._rows.setdefault(session_id, SessionJournal({}, {}))
        (journal.steps if kind == STEP else journal.streams)[key] = Row(data, now)
    elif factory.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(factory.target)) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO jrt_journal VALUES (?, ?, ?, ?, ?)",
                (session_id, kind, key, data, now),
            )
    else:
        await anyio.to_thread.run_sync(
            lambda: _run_sql(
                factory.target,
                "INSERT INTO jrt_journal VALUES ($1, $2, $3, $4, $5) ON CONFLICT "
                "(session_id, kind, key) DO UPDATE SET value = EXCLUDED.value",
                session_id,
                kind,
                key,
                data,
                now,
            )
        )


async def plant_signal(factory: StoreFactory, session_id: str, name: str, data: bytes) -> None:
    if factory.kind == "memory":
        store = factory._memory
        assert store is not None
        await store.send_signal(session_id, name, data, time.time())
    elif factory.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(factory.target)) as conn, conn:
            conn.execute(
                "INSERT INTO jrt_mailbox (session_id, name, payload, created_at) "
                "VALUES (?, ?, ?, ?)",
                (session_id, name, data, time.time()),
            )
    else:
        await anyio.to_thread.run_sync(
            lambda: _run_sql(
                factory.target,
                "INSERT INTO jrt_mailbox (session_id, name, payload, created_at) "
                "VALUES ($1, $2, $3, $4)",
                session_id,
                name,
                data,
                time.time(),
            )
        )


async def create_journal(factory: StoreFactory, **options: Any) -> None:
    """Open the journal once, so its tables exist, and close it again."""
    store = await factory.new(**options)
    await store.load_session("-")
    await factory.recycle()


async def raw_rows(store: JournalBackend, session_id: str) -> SessionJournal:
    return await store.load_session(session_id)


class Calls:
    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, value: Any) -> Any:
        self.n += 1
        return value


# -- signing ------------------------------------------------------------------------------------


async def test_signed_rows_round_trip(store_factory: StoreFactory) -> None:
    store = await store_factory.new(signing_key=KEY)
    assert store.codec.signed
    calls = Calls()
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        assert await rt.step("a", calls, {"x": 1}) == {"x": 1}
        assert [c async for c in rt.stream_step("st", _chunks)] == [1, 2, 3]
        await rt.signal("s1", "approve", "yes")
    rows = await raw_rows(store, "s1")
    # A signal receipt is signed too, behind its nonce (which its signature binds).
    receipt = rows.steps.pop("g:approve:0")
    assert receipt.data.startswith(NONCE_MARK)
    assert receipt.data[len(NONCE_MARK) + NONCE_BYTES :].startswith(MAGIC)
    assert all(r.data.startswith(MAGIC) for r in rows.steps.values())
    assert all(r.data.startswith(MAGIC) for r in rows.streams.values())
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        assert await rt.step("a", calls, {"x": 1}) == {"x": 1}
        assert [c async for c in rt.stream_step("st", _chunks)] == [1, 2, 3]
        assert await rt.wait_for_signal("s1", "approve", timeout=5) == "yes"
    assert calls.n == 1


async def _chunks() -> Any:
    for i in (1, 2, 3):
        yield i


async def test_planted_unsigned_pickle_is_refused_without_being_decoded(
    store_factory: StoreFactory, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "the-planted-pickle-ran"
    calls = Calls()
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        await rt.step("a", calls, 1)
    await store_factory.recycle()
    await plant(store_factory, "s1", STEP, key_of("b", 2), trace_pickle(marker))

    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        assert await rt.step("a", calls, 1) == 1  # signed rows still replay
        with pytest.raises(JournalIntegrityError) as info:
            await rt.step("b", calls, 2)
    assert not marker.exists(), "the planted pickle was decoded"
    assert calls.n == 1  # neither replayed nor run in its place
    err = info.value
    assert err.session_id == "s1"
    assert err.step == "b"  # the step by its name, not its journal key
    assert "not signed" in str(err)
    assert "without being decoded" in str(err)
    assert isinstance(err, JournalCorruptError)


async def test_planted_stream_and_signal_are_refused_without_being_decoded(
    store_factory: StoreFactory, tmp_path: pathlib.Path
) -> None:
    stream_marker = tmp_path / "stream-pickle-ran"
    signal_marker = tmp_path / "signal-pickle-ran"
    await create_journal(store_factory, signing_key=KEY)
    await plant(store_factory, "s1", STREAM, key_of("st"), trace_pickle(stream_marker))
    await plant_signal(store_factory, "s1", "approve", trace_pickle(signal_marker))
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        with pytest.raises(JournalIntegrityError) as info:
            await rt.wait_for_signal("s1", "approve", timeout=5)
        with pytest.raises(JournalIntegrityError):
            async for _ in rt.stream_step("st", _chunks):
                pass
    assert info.value.session_id == "s1"
    assert not stream_marker.exists()
    assert not signal_marker.exists()


async def test_signed_row_moved_to_another_session_or_step_is_refused(
    store_factory: StoreFactory,
) -> None:
    calls = Calls()
    store = await store_factory.new(signing_key=KEY)
    async with JournaledRuntime(store) as rt, rt.session("alice"):
        await rt.step("grant", calls, "alice")
    row = (await raw_rows(store, "alice")).steps[key_of("grant", "alice")]
    await store_factory.recycle()
    # The same bytes, valid for alice's "grant", planted for bob and for another step of alice.
    await plant(store_factory, "bob", STEP, key_of("grant", "alice"), row.data)
    await plant(store_factory, "alice", STEP, key_of("other"), row.data)
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt:
        async with rt.session("bob"):
            with pytest.raises(JournalIntegrityError, match="signature does not match"):
                await rt.step("grant", calls, "alice")
        async with rt.session("alice"):
            with pytest.raises(JournalIntegrityError):
                await rt.step("other", calls)
            assert await rt.step("grant", calls, "alice") == "alice"
    assert calls.n == 1


async def test_rows_signed_with_another_key_are_refused(store_factory: StoreFactory) -> None:
    calls = Calls()
    first = await store_factory.new(signing_key=OTHER_KEY)
    async with JournaledRuntime(first) as rt, rt.session("s1"):
        await rt.step("a", calls, 1)
    await store_factory.recycle()
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        with pytest.raises(JournalIntegrityError, match="signature does not match"):
            await rt.step("a", calls, 1)
    assert calls.n == 1


async def test_a_store_without_the_key_refuses_a_signed_journal(
    store_factory: StoreFactory,
) -> None:
    calls = Calls()
    async with JournaledRuntime(await store_factory.new(signing_key=KEY)) as rt, rt.session("s1"):
        await rt.step("a", calls, 1)
    await store_factory.recycle()
    async with JournaledRuntime(await store_factory.new(codec="pickle")) as rt, rt.session("s1"):
        with pytest.raises(JournalIntegrityError, match="JEEVESAGENT_SIGNING_KEY"):
            await rt.step("a", calls, 1)
    assert calls.n == 1


async def test_the_signing_key_comes_from_the_environment(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JEEVESAGENT_SIGNING_KEY", KEY)
    store = await store_factory.new(codec="pickle")
    assert store.codec.signed
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        await rt.step("a", Calls(), 1)
    assert all(r.data.startswith(MAGIC) for r in (await raw_rows(store, "s1")).steps.values())


def test_a_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        JournalCodec(signing_key="short")
    with pytest.raises(ValueError, match="unknown codec"):
        JournalCodec("yaml")


# -- the JSON codec -----------------------------------------------------------------------------


async def test_json_journal_rows_are_plain_json(store_factory: StoreFactory) -> None:
    store = await store_factory.new(codec="json")
    calls = Calls()
    value = {"flight": "AF123", "seats": [1, 2], "ok": True, "price": 12.5, "note": None}
    async with JournaledRuntime(store) as rt:
        async with rt.session("s1"):
            assert await rt.step("book", calls, value) == value
            assert [c async for c in rt.stream_step("st", _chunks)] == [1, 2, 3]
        await rt.signal("s1", "approve", {"by": "ana"})
        async with rt.session("s1"):
            assert await rt.wait_for_signal("s1", "approve", timeout=5) == {"by": "ana"}
    rows = await raw_rows(store, "s1")
    assert json.loads(rows.steps[key_of("book", value)].data) == value
    assert json.loads(rows.streams[key_of("st")].data) == [1, 2, 3]
    assert json.loads(rows.steps[signal_journal_key("approve", 0)].data) == {"by": "ana"}
    await store_factory.recycle()
    async with JournaledRuntime(await store_factory.new(codec="json")) as rt, rt.session("s1"):
        assert await rt.step("book", calls, value) == value
    assert calls.n == 1


async def test_json_codec_refuses_non_json_values_and_records_nothing(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new(codec="json")
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        with pytest.raises(ValueEncodingError) as info:
            await rt.step("bad", Calls(), {1, 2})
        with pytest.raises(ValueEncodingError):
            await rt.step("nan", Calls(), float("nan"))
    assert info.value.session_id == "s1"
    assert "json codec" in str(info.value)
    assert "builtins.set" in str(info.value)
    assert (await raw_rows(store, "s1")).steps == {}


async def test_json_codec_never_unpickles(
    store_factory: StoreFactory, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "pickle-ran"
    await create_journal(store_factory, codec="json")
    await plant(store_factory, "s1", STEP, key_of("a"), trace_pickle(marker))
    async with JournaledRuntime(await store_factory.new(codec="json")) as rt, rt.session("s1"):
        with pytest.raises(JournalCorruptError, match="never unpickles"):
            await rt.step("a", Calls())
    assert not marker.exists()


async def test_json_journaled_failure_replays_as_step_failed(store_factory: StoreFactory) -> None:
    calls = 0

    async def charge_once() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("card declined")

    charge = with_policy(charge_once, retry=RetryPolicy(attempts=1), journal_failures=True)

    async with JournaledRuntime(await store_factory.new(codec="json")) as rt, rt.session("s1"):
        with pytest.raises(RuntimeError, match="card declined"):
            await rt.step("charge", charge)
        with pytest.raises(StepFailedError, match="card declined") as info:
            await rt.step("charge", charge)
    assert info.value.type_name == "builtins.RuntimeError"
    assert calls == 1


async def test_signed_json_round_trips(store_factory: StoreFactory) -> None:
    store = await store_factory.new(codec="json", signing_key=KEY)
    calls = Calls()
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        await rt.step("a", calls, [1, "two"])
    row = (await raw_rows(store, "s1")).steps[key_of("a", [1, "two"])]
    assert row.data.startswith(MAGIC)
    assert json.loads(row.data[len(MAGIC) + 32 :]) == [1, "two"]
    async with (
        JournaledRuntime(await store_factory.new(codec="json", signing_key=KEY)) as rt,
        rt.session("s1"),
    ):
        assert await rt.step("a", calls, [1, "two"]) == [1, "two"]
    assert calls.n == 1


async def test_the_pickle_codec_reads_json_signals(store_factory: StoreFactory) -> None:
    """The CLI sends signals as JSON whatever the journal's codec."""
    await create_journal(store_factory)
    await plant_signal(store_factory, "s1", "approve", b'{"ok": true}')
    async with JournaledRuntime(await store_factory.new()) as rt, rt.session("s1"):
        assert await rt.wait_for_signal("s1", "approve", timeout=5) == {"ok": True}


# -- previews (what the CLI shows) ----------------------------------------------------------------


def test_peek_never_unpickles_an_untrusted_row(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    plain = JournalCodec()
    shown = peek(trace_pickle(marker), plain, "s", STEP, "s:a:x", trust=False)
    assert not shown.decoded
    assert shown.format == "pickle"
    assert "pathlib" in shown.note
    assert "not unpickled" in shown.note
    assert not marker.exists()

    shown = peek(b'{"a": 1}', plain, "s", STEP, "s:a:x", trust=False)
    assert shown.decoded
    assert shown.value == {"a": 1}

    shown = peek(pickle.dumps({"x": "secret"}), plain, "s", STEP, "s:a:x", trust=True)
    assert shown.decoded
    assert shown.value == {"x": "secret"}


def test_peek_decodes_pickles_whose_signature_verifies(tmp_path: pathlib.Path) -> None:
    signed = JournalCodec(signing_key=KEY)
    data = signed.encode({"x": 1}, "s", "0:s:a:x")
    shown = peek(data, signed, "s", STEP, "s:a:x", trust=False)
    assert shown.decoded
    assert shown.verified
    assert shown.value == {"x": 1}
    # Without the key: not decoded (its signature cannot be checked).
    shown = peek(data, JournalCodec(), "s", STEP, "s:a:x", trust=False)
    assert not shown.decoded
    assert shown.signed
    assert not shown.verified
    # A planted unsigned pickle with the key at hand: refused outright.
    marker = tmp_path / "ran"
    shown = peek(trace_pickle(marker), signed, "s", STEP, "s:a:x", trust=True)
    assert not shown.decoded
    assert "REFUSED" in shown.note
    assert not marker.exists()


def test_pickle_summary_reads_opcodes_only() -> None:
    from dataclasses import dataclass

    summary = pickle_summary(pickle.dumps({"flight": "AF123"}))
    assert "'flight'" in summary
    assert "'AF123'" in summary
    summary = pickle_summary(pickle.dumps(_Booking("AF123")))
    assert "test_values._Booking" in summary
    assert "not a readable pickle" in pickle_summary(b"\x80\x05garbage")
    assert dataclass  # imported for the class below


class _Booking:
    def __init__(self, ref: str) -> None:
        self.ref = ref

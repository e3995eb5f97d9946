"""The journal store protocol on every bundled store, a third-party store, and what is specific to
the SQLite and Postgres stores."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest

from jeevesagent.runtime import (
    InMemoryJournalStore,
    JournalCorruptError,
    JournaledRuntime,
    JournalEntry,
    JournalStore,
    PostgresJournalStore,
    PostgresRuntime,
    SessionBusyError,
    SqliteJournalStore,
    SqliteRuntime,
    StoreClosedError,
    StoreError,
)
from jeevesagent.runtime._journal.backend import JournalBackend

from .conftest import StoreFactory, _run_sql


@dataclasses.dataclass
class Receipt:
    order_id: str
    amount_cents: int


class Customer(pydantic.BaseModel):
    name: str
    tags: list[str]


ROUND_TRIP_VALUES: dict[str, Any] = {
    "dict": {"id": 7, "nested": {"items": [1, 2.5, "x"], "flag": True}},
    "pydantic": Customer(name="Ada", tags=["vip", "eu"]),
    "dataclass": Receipt("o-1", 1299),
    "none": None,
    "bytes": b"\x00\xff raw bytes",
    "unicode": "naïve — 日本",
}


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("jeevesagent-")]


# -- the protocol, on every store -----------------------------------------------------------------


async def test_put_step_then_get_step_round_trips_values(store: JournalBackend) -> None:
    for key, value in ROUND_TRIP_VALUES.items():
        await store.put_step("s", key, value)
    for key, value in ROUND_TRIP_VALUES.items():
        entry = await store.get_step("s", key)
        assert isinstance(entry, JournalEntry), key
        assert entry.value == value, key
        assert type(entry.value) is type(value), key


async def test_exception_instance_round_trips(store: JournalBackend) -> None:
    await store.put_step("s", "failure", ValueError("card declined", 402))
    entry = await store.get_step("s", "failure")
    assert entry is not None
    assert type(entry.value) is ValueError
    assert entry.value.args == ("card declined", 402)


async def test_recorded_none_is_an_entry_not_a_miss(store: JournalBackend) -> None:
    await store.put_step("s", "nothing", None)
    entry = await store.get_step("s", "nothing")
    assert entry is not None
    assert entry.value is None


async def test_created_at_is_recent_epoch_seconds(store: JournalBackend) -> None:
    before = time.time()
    await store.put_step("s", "a", 1)
    after = time.time()
    entry = await store.get_step("s", "a")
    assert entry is not None
    assert isinstance(entry.created_at, float)
    assert before - 1 <= entry.created_at <= after + 1


async def test_put_stream_then_get_stream_round_trips_chunks_in_order(
    store: JournalBackend,
) -> None:
    chunks = ["Hel", "lo", {"tool": "search"}, Receipt("o-2", 5), None, b"\x01"]
    await store.put_stream("s", "llm", chunks)
    assert await store.get_stream("s", "llm") == chunks


async def test_empty_stream_round_trips(store: JournalBackend) -> None:
    await store.put_stream("s", "nothing", [])
    assert await store.get_stream("s", "nothing") == []


async def test_second_put_step_keeps_the_first_value(store: JournalBackend) -> None:
    await store.put_step("s", "charge", {"charged": 10})
    await store.put_step("s", "charge", {"charged": 99})
    entry = await store.get_step("s", "charge")
    assert entry is not None
    assert entry.value == {"charged": 10}


async def test_second_put_stream_keeps_the_first_chunks(store: JournalBackend) -> None:
    await store.put_stream("s", "llm", ["a", "b"])
    await store.put_stream("s", "llm", ["c"])
    assert await store.get_stream("s", "llm") == ["a", "b"]


async def test_missing_step_and_stream_are_none(store: JournalBackend) -> None:
    assert await store.get_step("s", "never") is None
    assert await store.get_stream("s", "never") is None


async def test_keys_are_scoped_by_session(store: JournalBackend) -> None:
    await store.put_step("s1", "a", "one")
    await store.put_stream("s1", "b", ["one"])
    assert await store.get_step("s2", "a") is None
    assert await store.get_stream("s2", "b") is None


async def test_steps_and_streams_do_not_share_keys(store: JournalBackend) -> None:
    await store.put_step("s", "same", "step value")
    await store.put_stream("s", "same", ["stream chunk"])
    entry = await store.get_step("s", "same")
    assert entry is not None
    assert entry.value == "step value"
    assert await store.get_stream("s", "same") == ["stream chunk"]


async def test_closed_store_raises_store_closed_error_on_every_method(
    store: JournalBackend,
) -> None:
    await store.aclose()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get_step("s", "a"),
        lambda: store.put_step("s", "a", 1),
        lambda: store.get_stream("s", "b"),
        lambda: store.put_stream("s", "b", [1]),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError) as info:
            await call()
        assert info.value.session_id == "s"


async def test_aclose_is_idempotent(store: JournalBackend) -> None:
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreClosedError):
        await store.get_step("s", "a")


async def test_async_with_closes_the_store(store_factory: StoreFactory) -> None:
    async with await store_factory.new() as store:
        await store.put_step("s", "a", 1)
    assert not store_threads()
    with pytest.raises(StoreClosedError):
        await store.get_step("s", "a")


async def test_bundled_stores_satisfy_the_protocol(store: JournalBackend) -> None:
    assert isinstance(store, JournalStore)


async def test_restart_replays_steps_and_streams_without_running_fn(
    store_factory: StoreFactory,
) -> None:
    calls: list[tuple[str, Any]] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(("charge", amount))
        return {"charged": amount}

    async def tokens(prompt: str) -> AsyncIterator[str]:
        calls.append(("tokens", prompt))
        for word in prompt.split():
            yield word

    async def run(store: JournalBackend) -> tuple[Any, ...]:
        rt = JournaledRuntime(store)
        async with rt.session("order-1"):
            charged = await rt.step("charge", charge, 10)
            words = [w async for w in rt.stream_step("llm", tokens, "hello big world")]
            shipped = await rt.step("ship", charge, 20, idempotency_key="ship-order-1")
            nothing = await rt.step("noop", lambda: calls.append(("noop", None)))
        await rt.aclose()
        return charged, words, shipped, nothing

    first = await run(await store_factory.new())
    second = await run(await store_factory.new())
    assert first == ({"charged": 10}, ["hello", "big", "world"], {"charged": 20}, None)
    assert second == first
    assert calls == [("charge", 10), ("tokens", "hello big world"), ("charge", 20), ("noop", None)]


# -- a third-party store (the five published methods only) ----------------------------------------


class DictStore:
    """The smallest store a user could write: five async methods over dicts, first writer wins."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], JournalEntry] = {}
        self.streams: dict[tuple[str, str], list[Any]] = {}
        self.closed = False

    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        return self.steps.get((session_id, step_name))

    async def put_step(self, session_id: str, step_name: str, value: Any) -> None:
        self.steps.setdefault((session_id, step_name), JournalEntry(value, time.time()))

    async def get_stream(self, session_id: str, step_name: str) -> list[Any] | None:
        chunks = self.streams.get((session_id, step_name))
        return None if chunks is None else list(chunks)

    async def put_stream(self, session_id: str, step_name: str, chunks: list[Any]) -> None:
        self.streams.setdefault((session_id, step_name), list(chunks))

    async def aclose(self) -> None:
        self.closed = True


def test_dict_store_is_a_journal_store_and_not_native() -> None:
    assert isinstance(DictStore(), JournalStore)
    assert not isinstance(DictStore(), JournalBackend)


async def test_third_party_store_records_and_replays_steps() -> None:
    store = DictStore()
    calls: list[int] = []

    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    results = []
    for _ in range(2):
        async with JournaledRuntime(store) as rt, rt.session("s"):
            results.append(
                (
                    await rt.step("double", double, 1),
                    await rt.step("double", double, 2),
                    await rt.step("other", double, 3, idempotency_key="k-3"),
                )
            )
    assert results == [(2, 4, 6), (2, 4, 6)]
    assert calls == [1, 2, 3]
    assert len(store.steps) == 3
    assert not store.closed, "a store passed in stays the caller's"


async def test_third_party_store_replays_a_recorded_none() -> None:
    store = DictStore()
    calls: list[str] = []
    for _ in range(2):
        async with JournaledRuntime(store) as rt, rt.session("s"):
            assert await rt.step("notify", calls.append, "sent") is None
    assert calls == ["sent"]


async def test_third_party_store_records_and_replays_streams() -> None:
    store = DictStore()
    calls: list[str] = []

    async def tokens(prompt: str) -> AsyncIterator[str]:
        calls.append(prompt)
        for word in prompt.split():
            yield word

    results = []
    for _ in range(2):
        async with JournaledRuntime(store) as rt, rt.session("s"):
            results.append([w async for w in rt.stream_step("llm", tokens, "a b c")])
    assert results == [["a", "b", "c"], ["a", "b", "c"]]
    assert calls == ["a b c"]
    assert list(store.streams.values()) == [["a", "b", "c"]]


async def test_third_party_store_replays_a_received_signal() -> None:
    store = DictStore()
    async with JournaledRuntime(store) as rt, rt.session("s"):
        await rt.signal("s", "approve", {"by": "ops"})
        assert await rt.wait_for_signal("s", "approve") == {"by": "ops"}
    # Nothing is sent this time: the journaled receipt answers.
    async with JournaledRuntime(store) as rt, rt.session("s"):
        with anyio.fail_after(5):
            assert await rt.wait_for_signal("s", "approve") == {"by": "ops"}


async def test_third_party_store_journals_a_polled_signal_and_wait_replays_it() -> None:
    # Documented limitation: poll_signal is synchronous and cannot read a third-party store, so
    # the receipt replays through wait_for_signal (which can).
    store = DictStore()
    async with JournaledRuntime(store) as rt, rt.session("s"):
        await rt.signal("s", "approve", "yes")
        assert rt.poll_signal("s", "approve") == "yes"
    assert [key for _, key in store.steps] == ["g:approve:0"]
    async with JournaledRuntime(store) as rt, rt.session("s"):
        assert rt.poll_signal("s", "approve") is None
        assert await rt.wait_for_signal("s", "approve", timeout=1) == "yes"


async def race_two_runtimes_on_one_store(store: JournalStore) -> tuple[str, str, Any]:
    """Two runtimes run one step of one session at once: the second one's ``fn`` is already
    running when the first one records. Returns what each caller saw and what was recorded."""
    late_started, first_recorded = anyio.Event(), anyio.Event()
    seen: dict[str, str] = {}

    async def late() -> str:
        late_started.set()
        await first_recorded.wait()
        return "late"

    async def early() -> str:
        return "early"

    rt1, rt2 = JournaledRuntime(store), JournaledRuntime(store)
    async with rt1.session("s"), rt2.session("s"):

        async def run_late() -> None:
            seen["late"] = await rt2.step("pick", late)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_late)
            await late_started.wait()
            seen["early"] = await rt1.step("pick", early)
            first_recorded.set()
    await rt1.aclose()
    await rt2.aclose()
    async with JournaledRuntime(store) as rt3, rt3.session("s"):
        recorded = await rt3.step("pick", late)
    return seen["early"], seen["late"], recorded


async def test_native_store_lets_one_runtime_run_a_session_at_a_time() -> None:
    # A bundled store claims the session for one runtime, so the race above cannot happen there.
    store = InMemoryJournalStore()
    rt1, rt2 = JournaledRuntime(store), JournaledRuntime(store)
    async with rt1.session("s"):
        assert await rt1.step("pick", lambda: "early") == "early"
        with pytest.raises(SessionBusyError) as info:
            async with rt2.session("s"):
                pass
        assert info.value.session_id == "s"
    async with rt2.session("s"):
        assert await rt2.step("pick", lambda: "late") == "early"


async def test_third_party_store_runtimes_adopt_the_first_recorded_value() -> None:
    assert await race_two_runtimes_on_one_store(DictStore()) == ("early", "early", "early")


# -- SQLite ---------------------------------------------------------------------------------------


async def test_sqlite_in_memory_store_works() -> None:
    store = SqliteJournalStore(":memory:")
    assert store.path == Path(":memory:")
    try:
        await store.put_step("s", "a", {"x": 1})
        await store.put_stream("s", "b", [1, 2])
        entry = await store.get_step("s", "a")
        assert entry is not None
        assert entry.value == {"x": 1}
        assert await store.get_stream("s", "b") == [1, 2]
    finally:
        await store.aclose()


async def test_sqlite_in_memory_journals_are_private_to_each_store() -> None:
    one, two = SqliteJournalStore(":memory:"), SqliteJournalStore(":memory:")
    try:
        await one.put_step("s", "a", 1)
        assert await two.get_step("s", "a") is None
    finally:
        await one.aclose()
        await two.aclose()


async def test_sqlite_creates_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "journal.sqlite3"
    store = SqliteJournalStore(path)
    try:
        assert path.parent.is_dir()
        await store.put_step("s", "a", 1)
        assert path.is_file()
    finally:
        await store.aclose()


async def test_sqlite_path_is_a_pathlib_path(tmp_path: Path) -> None:
    target = tmp_path / "journal.sqlite3"
    for given in (str(target), target):
        store = SqliteJournalStore(given)
        assert isinstance(store.path, Path)
        assert store.path == target
        await store.aclose()


async def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    async with SqliteJournalStore(path) as store:
        await store.put_step("s", "a", 1)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_sqlite_store_connection_uses_synchronous_full(tmp_path: Path) -> None:
    async with SqliteJournalStore(tmp_path / "journal.sqlite3") as store:
        await store.put_step("s", "a", 1)
        level = await store._worker.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert level == 2  # FULL


async def test_sqlite_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    one, two = SqliteJournalStore(path), SqliteJournalStore(path)
    try:
        await one.put_step("s", "from-one", 1)
        await two.put_step("s", "from-two", 2)
        await two.put_stream("s", "stream-two", ["x"])
        for store in (one, two):
            a, b = await store.get_step("s", "from-one"), await store.get_step("s", "from-two")
            assert a is not None
            assert b is not None
            assert (a.value, b.value) == (1, 2)
            assert await store.get_stream("s", "stream-two") == ["x"]
    finally:
        await one.aclose()
        await two.aclose()
    async with SqliteJournalStore(path) as reopened:
        a, b = await reopened.get_step("s", "from-one"), await reopened.get_step("s", "from-two")
        assert a is not None
        assert b is not None
        assert (a.value, b.value) == (1, 2)


async def test_sqlite_concurrent_same_key_puts_on_one_file_keep_one_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite3"
    stores = [SqliteJournalStore(path) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                tg.start_soon(store.put_step, "s", "race", f"writer-{i}")
        seen = set()
        for store in stores:
            entry = await store.get_step("s", "race")
            assert entry is not None
            seen.add(entry.value)
        assert len(seen) == 1
        assert seen <= {f"writer-{i}" for i in range(4)}
    finally:
        for store in stores:
            await store.aclose()
    async with SqliteJournalStore(path) as reopened:
        entry = await reopened.get_step("s", "race")
        assert entry is not None
        assert {entry.value} == seen


async def test_sqlite_aclose_ends_the_store_thread(tmp_path: Path) -> None:
    store = SqliteJournalStore(tmp_path / "journal.sqlite3")
    await store.put_step("s", "a", 1)
    assert store_threads(), "the store runs its connection on a thread of its own"
    await store.aclose()
    assert not store_threads()


async def test_sqlite_aclose_of_an_unused_store(tmp_path: Path) -> None:
    store = SqliteJournalStore(tmp_path / "journal.sqlite3")
    await store.aclose()
    assert not store_threads()
    with pytest.raises(StoreClosedError):
        await store.put_step("s", "a", 1)


async def test_sqlite_file_that_is_not_a_database_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    store = SqliteJournalStore(path)
    try:
        with pytest.raises(StoreError) as info:
            await store.get_step("s", "a")
    finally:
        await store.aclose()
    assert not isinstance(info.value, StoreClosedError)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"these are my notes, not a database\n" * 200


async def test_sqlite_corrupt_row_raises_journal_corrupt_error_on_replay(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    calls: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(amount)
        return {"charged": amount}

    async with SqliteRuntime(path) as rt, rt.session("order-7"):
        await rt.step("charge_card", charge, 10)
    conn = sqlite3.connect(path)
    try:
        with conn:
            changed = conn.execute("UPDATE jrt_journal SET value = ?", (b"\x80\x05garbage",))
            assert changed.rowcount == 1
    finally:
        conn.close()

    async with SqliteRuntime(path) as rt:
        with pytest.raises(JournalCorruptError) as info:
            async with rt.session("order-7"):
                await rt.step("charge_card", charge, 10)
    assert calls == [10], "a corrupt record must not make the step run again"
    assert info.value.session_id == "order-7"
    assert info.value.step is not None
    assert "charge_card" in info.value.step
    assert "order-7" in str(info.value)
    assert "charge_card" in str(info.value)
    assert info.value.__cause__ is not None


async def test_sqlite_runtime_path_and_store(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "journal.sqlite3"
    rt = SqliteRuntime(path)
    try:
        assert rt.path == path
        assert isinstance(rt.path, Path)
        assert isinstance(rt.store, SqliteJournalStore)
        assert rt.store.path == path
    finally:
        await rt.aclose()


async def test_sqlite_runtime_aclose_closes_its_store(tmp_path: Path) -> None:
    rt = SqliteRuntime(tmp_path / "journal.sqlite3")
    async with rt.session("s"):
        assert await rt.step("a", lambda: 1) == 1
    await rt.aclose()
    assert not store_threads()
    with pytest.raises(StoreClosedError):
        await rt.store.get_step("s", "a")


async def test_sqlite_runtime_replays_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    calls: list[str] = []

    def greet() -> str:
        calls.append("ran")
        return "hi"

    for _ in range(2):
        async with SqliteRuntime(path) as rt, rt.session("s"):
            assert await rt.step("greet", greet) == "hi"
    assert calls == ["ran"]


# -- Postgres -------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_schema_sql_can_run_twice(pg_schema_dsn: str) -> None:
    for _ in range(2):
        for statement in PostgresJournalStore.schema_sql():
            _run_sql(pg_schema_dsn, statement)
    _run_sql(pg_schema_dsn, "SELECT session_id, kind, key, value, created_at FROM jrt_journal")


@pytest.mark.postgres
async def test_postgres_store_works_on_a_schema_applied_with_schema_sql(
    pg_schema_dsn: str,
) -> None:
    for statement in PostgresJournalStore.schema_sql():
        _run_sql(pg_schema_dsn, statement)
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        await store.put_step("s", "a", {"x": 1})
        entry = await store.get_step("s", "a")
        assert entry is not None
        assert entry.value == {"x": 1}
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_init_schema_twice(pg_schema_dsn: str) -> None:
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        await store.init_schema()
        await store.put_step("s", "a", 1)
        await store.init_schema()
        entry = await store.get_step("s", "a")
        assert entry is not None
        assert entry.value == 1, "init_schema must not wipe recorded rows"
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_without_schema_raises_store_error_naming_init_schema(
    pg_schema_dsn: str,
) -> None:
    store = await PostgresJournalStore.connect(pg_schema_dsn, max_size=2)
    try:
        with pytest.raises(StoreError, match="init_schema") as info:
            await store.get_step("s", "a")
    finally:
        await store.aclose()
    assert info.value.__cause__ is not None


@pytest.mark.postgres
async def test_postgres_runtime_records_and_replays_after_reconnect(pg_schema_dsn: str) -> None:
    calls: list[tuple[str, Any]] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(("charge", amount))
        return {"charged": amount}

    async def tokens() -> AsyncIterator[str]:
        calls.append(("tokens", None))
        for t in ("a", "b"):
            yield t

    results = []
    for _ in range(2):
        rt = await PostgresRuntime.connect(pg_schema_dsn, max_size=2)
        try:
            await rt.init_schema()
            async with rt.session("order-9"):
                results.append(
                    (
                        await rt.step("charge", charge, 5),
                        [t async for t in rt.stream_step("llm", tokens)],
                    )
                )
        finally:
            await rt.aclose()
    assert results == [({"charged": 5}, ["a", "b"])] * 2
    assert calls == [("charge", 5), ("tokens", None)]


@pytest.mark.postgres
async def test_postgres_aclose_leaves_no_store_thread(pg_schema_dsn: str) -> None:
    rt = await PostgresRuntime.connect(pg_schema_dsn, max_size=2)
    await rt.init_schema()
    async with rt.session("s"):
        await rt.step("a", lambda: 1)
    await rt.aclose()
    assert not store_threads()
    with pytest.raises(StoreClosedError):
        await rt.store.get_step("s", "a")


@pytest.mark.postgres
async def test_postgres_unknown_database_raises_store_error(pg_dsn: str) -> None:
    parts = urllib.parse.urlsplit(pg_dsn)
    missing = "jeevesagent_no_such_database"
    dsn = urllib.parse.urlunsplit(parts._replace(path="/" + missing))
    with pytest.raises(StoreError) as info:
        await PostgresJournalStore.connect(dsn, max_size=1)
    assert missing in str(info.value)
    assert "PostgreSQL" in str(info.value)
    assert info.value.__cause__ is not None
    assert not store_threads()


@pytest.mark.postgres
async def test_postgres_unreachable_server_raises_store_error(pg_dsn: str) -> None:
    parts = urllib.parse.urlsplit(pg_dsn)
    netloc = parts.netloc.rpartition("@")
    dsn = urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:1"))
    with pytest.raises(StoreError, match="server is running") as info:
        await PostgresJournalStore.connect(dsn, max_size=1)
    assert isinstance(info.value.__cause__, OSError)
    assert not store_threads()

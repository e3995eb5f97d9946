"""Stream steps: record on exhaustion only, replay in order, close the producer however it stops."""

from __future__ import annotations

import contextlib
import gc
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import (
    InMemoryJournalStore,
    InProcRuntime,
    JournaledRuntime,
    ValueEncodingError,
)
from jeevesagent.runtime._journal.backend import JournalBackend

from .conftest import StoreFactory

Runtime = InProcRuntime | JournaledRuntime


class Producer:
    """An async-generator producer that counts its starts and records when it was closed."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.starts = 0
        self.closed = 0
        self.pulled = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.starts += 1
        try:
            for chunk in self.chunks:
                await anyio.lowlevel.checkpoint()
                self.pulled += 1
                yield chunk
        finally:
            self.closed += 1


async def collect(rt: Runtime, name: str, fn: Callable[..., Any], *args: Any) -> list[Any]:
    return [chunk async for chunk in rt.stream_step(name, fn, *args)]


def memory_runtime() -> tuple[JournaledRuntime, InMemoryJournalStore]:
    store = InMemoryJournalStore()
    return JournaledRuntime(store), store


@pytest.fixture(params=["inproc", "journaled"])
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return InProcRuntime() if request.param == "inproc" else JournaledRuntime()


async def assert_stream_not_recorded(rt: Runtime, name: str) -> None:
    """The next run of the stream (same session ``s``) calls the producer again."""
    again = Producer(["fresh"])
    async with rt.session("s"):
        assert await collect(rt, name, again) == ["fresh"]
    assert again.starts == 1


# -- record and replay -----------------------------------------------------------------------------


async def test_stream_is_recorded_only_when_the_producer_is_exhausted() -> None:
    rt, store = memory_runtime()
    producer = Producer(["a", "b", "c"])
    seen: list[str] = []
    async with rt.session("s"):
        async for chunk in rt.stream_step("tokens", producer):
            seen.append(chunk)
            assert store.stream_keys() == []
        assert len(store.stream_keys()) == 1
    assert seen == ["a", "b", "c"]


async def test_recorded_stream_replays_in_order_in_new_runtime_without_the_producer(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    chunks: list[Any] = ["a", {"b": [1, 2]}, None, ("c", 3)]
    producer = Producer(chunks)
    rt = JournaledRuntime(store)
    async with rt.session("s"):
        assert await collect(rt, "tokens", producer, "prompt") == chunks
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("s"):
        assert await collect(rt2, "tokens", producer, "prompt") == chunks
    assert producer.starts == 1


async def test_recorded_stream_replays_in_the_same_run() -> None:
    producer = Producer([1, 2, 3])
    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await collect(rt, "numbers", producer) == [1, 2, 3]
        assert await collect(rt, "numbers", producer) == [1, 2, 3]
    assert producer.starts == 1


async def test_empty_stream_is_recorded_and_replayed() -> None:
    producer = Producer([])
    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await collect(rt, "empty", producer) == []
    async with rt.session("s"):
        assert await collect(rt, "empty", producer) == []
    assert producer.starts == 1


async def test_stream_with_different_args_runs_the_producer_again() -> None:
    starts: list[str] = []

    async def echo(word: str, *, times: int) -> AsyncIterator[str]:
        starts.append(word)
        for _ in range(times):
            yield word

    rt = JournaledRuntime()
    async with rt.session("s"):
        assert [c async for c in rt.stream_step("echo", echo, "hi", times=2)] == ["hi", "hi"]
        assert [c async for c in rt.stream_step("echo", echo, "yo", times=1)] == ["yo"]
        assert [c async for c in rt.stream_step("echo", echo, "hi", times=2)] == ["hi", "hi"]
    assert starts == ["hi", "yo"]


# -- the consumer stops early ----------------------------------------------------------------------


async def test_consumer_stopping_early_with_aclosing_closes_producer_and_records_nothing(
    runtime: Runtime,
) -> None:
    producer = Producer(["a", "b", "c", "d"])
    async with runtime.session("s"):
        async with contextlib.aclosing(runtime.stream_step("tokens", producer)) as stream:
            async for chunk in stream:
                if chunk == "b":
                    break
        assert producer.closed == 1
        assert producer.pulled == 2
    if isinstance(runtime, JournaledRuntime):
        assert isinstance(runtime.store, InMemoryJournalStore)
        assert runtime.store.stream_keys() == []
    await assert_stream_not_recorded(runtime, "tokens")


async def test_consumer_stopping_early_with_plain_break_closes_producer_and_records_nothing(
    runtime: Runtime,
) -> None:
    producer = Producer(["a", "b", "c", "d"])
    async with runtime.session("s"):
        with warnings.catch_warnings():
            # trio warns that the abandoned generator should have been closed with aclosing():
            # that is this scenario, on purpose.
            warnings.simplefilter("ignore", ResourceWarning)
            async for chunk in runtime.stream_step("tokens", producer):
                if chunk == "b":
                    break
            gc.collect()
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
        assert producer.closed == 1
        assert producer.pulled == 2
    if isinstance(runtime, JournaledRuntime):
        assert isinstance(runtime.store, InMemoryJournalStore)
        assert runtime.store.stream_keys() == []
    await assert_stream_not_recorded(runtime, "tokens")


async def test_consumer_stopping_after_last_chunk_without_exhausting_records_nothing() -> None:
    rt, store = memory_runtime()
    producer = Producer(["only"])
    async with rt.session("s"):
        async with contextlib.aclosing(rt.stream_step("tokens", producer)) as stream:
            assert await stream.__anext__() == "only"
        assert producer.closed == 1
    assert store.stream_keys() == []


async def test_replayed_stream_can_be_stopped_early() -> None:
    producer = Producer(["a", "b", "c"])
    rt = JournaledRuntime()
    async with rt.session("s"):
        await collect(rt, "tokens", producer)
        async with contextlib.aclosing(rt.stream_step("tokens", producer)) as stream:
            async for chunk in stream:
                assert chunk == "a"
                break
        assert await collect(rt, "tokens", producer) == ["a", "b", "c"]
    assert producer.starts == 1


# -- failures and cancellation ---------------------------------------------------------------------


async def test_producer_exception_propagates_and_the_next_run_calls_it_again(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    error = ConnectionError("stream dropped")
    attempts = 0
    seen: list[str] = []

    async def flaky() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        yield "a"
        if attempts == 1:
            raise error
        yield "b"

    rt = JournaledRuntime(store)

    async def consume() -> None:
        async for chunk in rt.stream_step("tokens", flaky):
            seen.append(chunk)

    async with rt.session("s"):
        with pytest.raises(ConnectionError) as info:
            await consume()
    assert info.value is error
    assert seen == ["a"]

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("s"):
        assert await collect(rt2, "tokens", flaky) == ["a", "b"]
    assert attempts == 2


async def test_producer_exception_propagates_unchanged_from_inproc_stream() -> None:
    error = KeyError("k")

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise error

    rt = InProcRuntime()
    async with rt.session("s"):
        with pytest.raises(KeyError) as info:
            await collect(rt, "tokens", broken)
    assert info.value is error


async def test_cancellation_mid_stream_records_nothing_and_propagates_to_the_scope(
    runtime: Runtime,
) -> None:
    first_chunk = anyio.Event()
    closed: list[bool] = []
    reached_after_loop: list[bool] = []

    async def stalls() -> AsyncIterator[str]:
        try:
            yield "a"
            await anyio.sleep_forever()
            yield "never"
        finally:
            closed.append(True)

    scope = anyio.CancelScope()

    async def consume() -> None:
        with scope:
            async for _ in runtime.stream_step("tokens", stalls):
                first_chunk.set()
            reached_after_loop.append(True)

    async with runtime.session("s"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await first_chunk.wait()
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
        assert scope.cancelled_caught
        assert reached_after_loop == []
        assert closed == [True]
    if isinstance(runtime, JournaledRuntime):
        assert isinstance(runtime.store, InMemoryJournalStore)
        assert runtime.store.stream_keys() == []
    await assert_stream_not_recorded(runtime, "tokens")


async def test_unencodable_chunk_raises_value_encoding_error_at_the_end_and_records_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    lock = threading.Lock()

    async def with_lock() -> AsyncIterator[Any]:
        yield "fine"
        yield lock

    rt = JournaledRuntime(store)
    seen: list[Any] = []

    async def consume() -> None:
        async for chunk in rt.stream_step("tokens", with_lock):
            seen.append(chunk)

    async with rt.session("enc-s"):
        with pytest.raises(ValueEncodingError) as info:
            await consume()
    assert seen == ["fine", lock]  # every chunk reached the consumer first
    assert info.value.session_id == "enc-s"
    assert "enc-s" in str(info.value)
    assert "tokens" in str(info.value)
    if isinstance(store, InMemoryJournalStore):
        assert store.stream_keys() == []

    again = Producer(["fresh"])
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("enc-s"):
        assert await collect(rt2, "tokens", again) == ["fresh"]
    assert again.starts == 1


# -- producer shapes -------------------------------------------------------------------------------


class Countdown:
    """An async iterable that is not an async generator (no ``aclose``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> int:
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n + 1


def returns_async_iterable(n: int) -> Countdown:
    return Countdown(n)


async def async_gen_function(n: int) -> AsyncIterator[int]:
    for i in range(n, 0, -1):
        yield i


def sync_generator(n: int) -> Iterator[int]:
    yield from range(n, 0, -1)


async def coroutine_returning_async_iterable(n: int) -> Countdown:
    await anyio.lowlevel.checkpoint()
    return Countdown(n)


PRODUCERS = [
    pytest.param(async_gen_function, id="async-generator-function"),
    pytest.param(returns_async_iterable, id="function-returning-async-iterable"),
    pytest.param(sync_generator, id="sync-generator"),
    pytest.param(coroutine_returning_async_iterable, id="coroutine-returning-async-iterable"),
]


@pytest.mark.parametrize("make", PRODUCERS)
async def test_producer_shapes_record_and_replay(make: Callable[[int], Any]) -> None:
    starts = 0

    def counted(n: int) -> Any:
        nonlocal starts
        starts += 1
        return make(n)

    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await collect(rt, "count", counted, 3) == [3, 2, 1]
    async with rt.session("s"):
        assert await collect(rt, "count", counted, 3) == [3, 2, 1]
    assert starts == 1


@pytest.mark.parametrize("make", PRODUCERS)
async def test_producer_shapes_pass_through_inproc(make: Callable[[int], Any]) -> None:
    rt = InProcRuntime()
    async with rt.session("s"):
        assert await collect(rt, "count", make, 2) == [2, 1]
    assert await collect(rt, "count", make, 2) == [2, 1]  # outside a session too


async def test_sync_generator_producer_is_closed_when_the_consumer_stops_early(
    runtime: Runtime,
) -> None:
    closed: list[bool] = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed.append(True)

    async with runtime.session("s"):
        async with contextlib.aclosing(runtime.stream_step("numbers", numbers)) as stream:
            async for n in stream:
                if n == 1:
                    break
        assert closed == [True]


async def test_non_iterable_producer_result_raises_type_error() -> None:
    rt = JournaledRuntime()
    async with rt.session("s"):
        with pytest.raises(TypeError, match="async iterable"):
            await collect(rt, "bad", lambda: 42)


# -- InProcRuntime and no session ------------------------------------------------------------------


async def test_inproc_stream_runs_the_producer_every_time() -> None:
    producer = Producer(["x", "y"])
    rt = InProcRuntime()
    async with rt.session("s"):
        assert await collect(rt, "tokens", producer) == ["x", "y"]
        assert await collect(rt, "tokens", producer) == ["x", "y"]
    assert producer.starts == 2
    assert producer.closed == 2


async def test_journaled_stream_outside_a_session_passes_through_and_records_nothing() -> None:
    rt, store = memory_runtime()
    producer = Producer(["x", "y"])
    assert await collect(rt, "tokens", producer) == ["x", "y"]
    assert await collect(rt, "tokens", producer) == ["x", "y"]
    assert producer.starts == 2
    assert store.stream_keys() == []

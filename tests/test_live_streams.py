"""Live stream journaling in one process, on every store (issue 13, part B): chunks journaled
in batches, never one write per chunk; a stream that never completed is never replayed as a
complete one; ``read_stream`` raising :class:`StreamFailedError` when the session ends without
completing the stream; the options. Across processes: test_stream_processes.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import (
    JournaledRuntime,
    StreamFailedError,
    current_stream_prefix,
)
from jeevesagent.runtime._core.keys import describe_key, is_chunks_key

from .conftest import StoreFactory


async def ticks(n: int, fail_at: int = -1) -> AsyncIterator[int]:
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("model connection dropped")
        await anyio.lowlevel.checkpoint()
        yield i


async def chunk_keys(rt: JournaledRuntime, sid: str) -> list[str]:
    journal = await rt._backend.load_session(sid)
    return [key for key in journal.streams if is_chunks_key(key)]


async def test_chunks_are_journaled_in_batches_never_one_write_per_chunk(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    # A flush interval longer than the test: the chunk count decides, 100 chunks in tens.
    async with JournaledRuntime(store, stream_flush_interval=60.0, stream_flush_chunks=10) as rt:
        async with rt.session("batches"):
            before = rt._backend.commits
            got = [c async for c in rt.stream_step("reply", ticks, 100)]
            writes = rt._backend.commits - before
        assert got == list(range(100))
        assert writes == 10 + 1  # ten batches of ten, then the complete stream: never 100
        keys = sorted(await chunk_keys(rt, "batches"), key=lambda k: int(k.rpartition(":")[2]))
        assert len(keys) == 10
        assert describe_key(keys[1]) == "reply chunks from #10"
        # The completed stream replays from its complete row, as before.
        async with rt.session("batches"):
            assert [c async for c in rt.stream_step("reply", ticks, 100)] == list(range(100))
        assert [c async for c in rt.read_stream("batches", "reply", offset=95)] == [
            95,
            96,
            97,
            98,
            99,
        ]


async def test_a_stream_that_never_completed_is_not_taken_for_a_complete_one(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = await store_factory.new()
    async with JournaledRuntime(store, stream_flush_interval=60.0, stream_flush_chunks=4) as rt:
        seen: list[int] = []

        async def consume() -> None:
            async with rt.session("broken"):
                async for c in rt.stream_step("reply", ticks, 20, 10):
                    seen.append(c)

        with pytest.raises(RuntimeError, match="dropped"):
            await consume()
        assert seen == list(range(10))
        assert len(await chunk_keys(rt, "broken")) == 2  # chunks 0-3 and 4-7 journaled
        assert await store.get_stream("broken", "reply") is None
        # Run again: the journaled prefix (8 chunks), then the producer's chunks after it (it
        # starts over and does not ask: its first 8 are dropped) -- never replayed as complete.
        calls = 0

        async def counted(n: int, fail_at: int) -> AsyncIterator[int]:
            nonlocal calls
            calls += 1
            async for c in ticks(n):
                yield c if c != 3 else -3  # differs from the recorded chunk 3: a warning

        with caplog.at_level(logging.WARNING, logger="jeevesagent.runtime"):
            async with rt.session("broken"):
                again = [c async for c in rt.stream_step("reply", counted, 20, 10)]
        assert calls == 1
        assert again == list(range(20))  # the recorded 3, not the new -3
        assert "did not ask for the 8 recorded chunks" in caplog.text


async def test_a_producer_that_asks_gets_the_prefix_and_goes_on_from_it(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    asked: list[list[int]] = []

    async def model(n: int) -> AsyncIterator[int]:
        prefix = current_stream_prefix()
        asked.append(prefix)
        for i in range(len(prefix), n):
            if i == 6 and not prefix:
                raise RuntimeError("model connection dropped")
            yield i

    async with JournaledRuntime(store, stream_flush_interval=60.0, stream_flush_chunks=3) as rt:
        with pytest.raises(RuntimeError):
            async with rt.session("ask"):
                [c async for c in rt.stream_step("reply", model, 10)]
        async with rt.session("ask"):
            assert [c async for c in rt.stream_step("reply", model, 10)] == list(range(10))
    assert asked == [[], [0, 1, 2, 3, 4, 5]]
    assert current_stream_prefix() == []  # outside a producer


async def test_read_stream_raises_when_the_session_ended_without_completing_it(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    async with JournaledRuntime(
        store, stream_flush_interval=60.0, stream_flush_chunks=2, poll_interval=0.01
    ) as rt:
        async with rt.session("gave-up"):
            with pytest.raises(RuntimeError):
                async for _ in rt.stream_step("reply", ticks, 10, 5):
                    pass
            await rt.step("apologise", lambda: "sorry")
        got: list[int] = []

        async def read(name: str) -> None:
            with anyio.fail_after(10):
                async for c in rt.read_stream("gave-up", name):
                    got.append(c)

        with pytest.raises(StreamFailedError, match="without completing stream step 'reply'"):
            await read("reply")
        assert got == [0, 1, 2, 3]  # what was journaled before it failed
        with pytest.raises(StreamFailedError, match="without running a stream step named 'x'"):
            await read("x")
        assert got == [0, 1, 2, 3]


async def test_options_are_checked_and_live_journaling_can_be_turned_off(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    with pytest.raises(ValueError, match="stream_flush_chunks"):
        JournaledRuntime(store, stream_flush_chunks=0)
    with pytest.raises(ValueError, match="stream_flush_interval"):
        JournaledRuntime(store, stream_flush_interval=-1.0)
    async with JournaledRuntime(store, stream_flush_interval=None, stream_flush_chunks=1) as rt:
        with pytest.raises(ValueError, match="offset"):
            rt.read_stream("off", "reply", offset=-1)
        async with rt.session("off"):
            before = rt._backend.commits
            assert [c async for c in rt.stream_step("reply", ticks, 50)] == list(range(50))
            assert rt._backend.commits - before == 1  # only the complete stream, as before
        assert await chunk_keys(rt, "off") == []


async def test_a_reader_dropped_while_its_listen_connection_opens_leaks_nothing(
    pg_schema_dsn: str,
) -> None:
    """A reader cancelled at once, before the store's LISTEN connection for streams is up: the
    connection is still the store's, and closing the store closes it. (asyncpg before 0.32 left
    the socket of a cancelled connect() open: the store must not cancel its connect.)"""
    import gc
    import warnings

    from jeevesagent.runtime import PostgresJournalStore

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for attempt in range(12):
            store = await PostgresJournalStore.connect(pg_schema_dsn)
            await store.init_schema()
            rt = JournaledRuntime(store)
            async with anyio.create_task_group() as tg:

                async def read(rt: JournaledRuntime) -> None:
                    async for _ in rt.read_stream("nobody", "tokens"):
                        pass

                tg.start_soon(read, rt)
                await anyio.sleep(0.001 * (attempt % 4))  # at once, or during the connect
                tg.cancel_scope.cancel()
            await store.aclose()
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []

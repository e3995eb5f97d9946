"""The Postgres store's LISTEN connection, lost for real (``pg_terminate_backend``; a database
that refuses new connections): the store reopens it, waiters poll while it is down and are woken
by pushes again once it is back, and ``aclose()`` ends the reopening.

A waiter whose runtime polls only every 60 s can be woken within the tests' deadlines by a push
(or the store's wake-up after reopening) alone, so no timing goes into an assertion.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore

from .conftest import StoreFactory, pg

pytestmark = pytest.mark.parametrize("store_kind", ["postgres"])

_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
    "AND query LIKE 'LISTEN %' ORDER BY pid"
)


def database(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def admin_dsn(dsn: str) -> str:
    """The same server, another database: it stays reachable when ours refuses connections."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/template1"))


def listeners(dsn: str) -> list[int]:
    """Server pids of the LISTEN connections to the test's database."""
    rows = pg(admin_dsn(dsn), lambda conn: conn.fetch(_LISTENERS, database(dsn)))
    return [row[0] for row in rows]


def terminate(pids: list[int], dsn: str) -> None:
    pg(
        admin_dsn(dsn),
        lambda conn: conn.execute(
            "SELECT pg_terminate_backend(x) FROM unnest($1::int[]) AS x", pids
        ),
    )


def allow_connections(dsn: str, allow: bool) -> None:
    sql = f'ALTER DATABASE "{database(dsn)}" ALLOW_CONNECTIONS {str(allow).lower()}'
    pg(admin_dsn(dsn), lambda conn: conn.execute(sql))


async def until(predicate: Any) -> None:
    """Wait (polling) until ``predicate()`` holds; the caller's fail_after bounds it."""
    while not predicate():  # noqa: ASYNC110 -- the state is in the store or on the server
        await anyio.sleep(0.02)


async def test_signals_are_pushed_again_after_the_listen_connection_is_terminated(
    store_factory: StoreFactory, store_target: str
) -> None:
    received = anyio.create_memory_object_stream[Any](4)
    send, receive = received
    async with (
        JournaledRuntime(await store_factory.new(), poll_interval=60) as a,
        JournaledRuntime(await store_factory.new()) as b,
        a.session("s"),
        send,
        receive,
    ):

        async def wait() -> None:
            for _ in range(2):
                await send.send(await a.wait_for_signal("s", "go", timeout=50))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            with anyio.fail_after(10):
                await until(lambda: a._signals.pushed)  # the waiter listens
                [old] = listeners(store_target)
                terminate([old], store_target)
                # Sent while the connection is down or just back: its notice may be lost, and
                # the waiter polls only every 60 s -- the store's reopening must wake it.
                await b.signal("s", "go", 1)
                assert await receive.receive() == 1
                await until(lambda: listeners(store_target) not in ([], [old]))
                # Back: a push wakes the waiter again.
                await b.signal("s", "go", 2)
                assert await receive.receive() == 2


async def test_waiters_poll_while_the_listener_cannot_be_reopened_and_aclose_ends_the_retries(
    store_target: str,
) -> None:
    # Pools opened in full now: while the database refuses new connections only the LISTEN
    # connection is missing.
    a_store = await PostgresJournalStore.connect(store_target, min_size=4, max_size=4)
    await a_store.init_schema()
    b_store = await PostgresJournalStore.connect(store_target, min_size=2, max_size=2)
    try:
        async with (
            JournaledRuntime(a_store, poll_interval=0.05) as a,
            JournaledRuntime(b_store) as b,
            a.session("s"),
        ):
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(a.wait_for_signal, "s", "warm-up", timeout=10))
                    await until(lambda: a._signals.pushed)
                    tg.cancel_scope.cancel()
                allow_connections(store_target, False)
                try:
                    terminate(listeners(store_target), store_target)
                    await until(lambda: a_store._listener.reopening)
                    got: list[Any] = []
                    async with anyio.create_task_group() as tg:

                        async def wait() -> None:
                            got.append(await a.wait_for_signal("s", "go", timeout=10))

                        tg.start_soon(wait)
                        await until(lambda: a._signals.pushed is False)  # the waiter polls
                        await b.signal("s", "go", 1)
                    # No LISTEN connection could be opened: polling found the signal.
                    assert got == [1]
                    assert listeners(store_target) == []
                    retries = a_store._listener._reopen
                    assert retries is not None
                    assert not retries.done()
                    await a_store.aclose()  # while it is still trying to reopen
                    assert retries.done()
                    assert not a_store._listener.active
                    if isinstance(retries, asyncio.Task) and a_store._bridge.loop.is_running():
                        assert retries.cancelled()
                finally:
                    allow_connections(store_target, True)
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_a_recorded_stream_row_sends_its_notice_and_a_step_row_none(
    store_kind: str, pg_schema_dsn: str
) -> None:
    """Stream readers are woken by a notice on ``jrt_stream`` sent with the row (in the same
    statement for a session's one-row write); a step row sends none. Read on a LISTEN
    connection of the test's own, in a thread."""
    import threading

    from jeevesagent.runtime._journal.rows import STEP, STREAM, Record

    store = await PostgresJournalStore.connect(pg_schema_dsn, min_size=1, max_size=2)
    ready = threading.Event()
    try:
        await store.init_schema()
        await store.open_session("s", "me", 60.0)

        async def listen(conn: Any) -> list[str]:
            got: list[str] = []
            arrived = asyncio.Event()

            def on_notice(*args: Any) -> None:
                got.append(args[3])
                arrived.set()

            await conn.add_listener("jrt_stream", on_notice)
            ready.set()
            await asyncio.wait_for(arrived.wait(), 30)
            await asyncio.sleep(0.2)  # a second notice (there must be none) would arrive now
            return got

        async with anyio.create_task_group() as tg:
            heard: list[list[str]] = []

            async def listener() -> None:
                heard.append(await anyio.to_thread.run_sync(pg, pg_schema_dsn, listen))

            tg.start_soon(listener)
            await anyio.to_thread.run_sync(ready.wait, 30)
            owners = {"s": "me"}
            await store.write_rows([Record("s", STEP, "s:a", b"\x00", 1.0)], owners)
            await store.write_rows([Record("s", STREAM, "c:s:x:0", b"\x01", 2.0)], owners)
        assert heard == [["s"]]
    finally:
        await store.aclose()

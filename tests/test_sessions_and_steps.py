"""Sessions and steps: identity, replay, recording rules, concurrency, context and closing.

Store-facing behaviour (what survives a reopen) runs on every store; pure semantics run on the
default in-memory store of ``JournaledRuntime()`` (and on ``InProcRuntime`` where they are shared).
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import (
    InMemoryJournalStore,
    InProcRuntime,
    InProcSession,
    JournaledRuntime,
    JournaledSession,
    StoreClosedError,
    ValueEncodingError,
)
from jeevesagent.runtime._journal.backend import JournalBackend, SessionJournal

from .conftest import StoreFactory

Runtime = InProcRuntime | JournaledRuntime


class Calls:
    """A step function (sync via ``sync``, async via ``async_``) that records how it was called."""

    def __init__(self, result: Any = "result") -> None:
        self.result = result
        self.seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    @property
    def count(self) -> int:
        return len(self.seen)

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.append((args, kwargs))
        return self.result

    async def async_(self, *args: Any, **kwargs: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        self.seen.append((args, kwargs))
        return self.result


class CountingStore(InMemoryJournalStore):
    """An in-memory store that counts session loads (one per fresh session state)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def read_session(self, session_id: str) -> SessionJournal:
        self.loads += 1
        return await super().read_session(session_id)


class GatedLoadStore(CountingStore):
    """Session loads block until ``gate`` is set; ``loading`` is set when a load has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.loading = anyio.Event()

    async def read_session(self, session_id: str) -> SessionJournal:
        self.loading.set()
        await self.gate.wait()
        return await super().read_session(session_id)


def memory_runtime() -> tuple[JournaledRuntime, InMemoryJournalStore]:
    store = InMemoryJournalStore()
    return JournaledRuntime(store), store


@pytest.fixture(params=["inproc", "journaled"])
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return InProcRuntime() if request.param == "inproc" else JournaledRuntime()


# -- replay across runtimes (every store) ----------------------------------------------------------


async def test_recorded_sync_and_async_steps_replay_in_new_runtime_without_calling_fn(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    sync_fn, async_fn = Calls("sync-result"), Calls({"async": [1, 2]})
    rt = JournaledRuntime(store)
    async with rt.session("order-1"):
        assert await rt.step("sync", sync_fn.sync, 1) == "sync-result"
        assert await rt.step("async", async_fn.async_, 2) == {"async": [1, 2]}

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("order-1"):
        assert await rt2.step("sync", sync_fn.sync, 1) == "sync-result"
        assert await rt2.step("async", async_fn.async_, 2) == {"async": [1, 2]}
    assert (sync_fn.count, async_fn.count) == (1, 1)


async def test_none_result_is_recorded_and_replayed_without_calling_fn(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    fn = Calls(None)
    rt = JournaledRuntime(store)
    async with rt.session("s"):
        assert await rt.step("nothing", fn.sync) is None
        assert await rt.step("nothing", fn.sync) is None
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("s"):
        assert await rt2.step("nothing", fn.sync) is None
    assert fn.count == 1


async def test_replay_is_per_session(store: JournalBackend, store_factory: StoreFactory) -> None:
    fn = Calls(7)
    rt = JournaledRuntime(store)
    async with rt.session("a"):
        await rt.step("x", fn.sync)
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("b"):
        assert await rt2.step("x", fn.sync) == 7
    assert fn.count == 2


# -- step identity --------------------------------------------------------------------------------


async def test_kwargs_reach_fn() -> None:
    fn = Calls()
    rt = JournaledRuntime()
    async with rt.session("s"):
        await rt.step("call", fn.sync, 1, "two", flag=True, items=[3])
    assert fn.seen == [((1, "two"), {"flag": True, "items": [3]})]


async def test_kwargs_are_part_of_step_identity() -> None:
    fn = Calls()
    rt = JournaledRuntime()
    async with rt.session("s"):
        await rt.step("call", fn.sync, x=1)
        await rt.step("call", fn.sync, x=1)
        await rt.step("call", fn.sync, x=2)
    assert fn.seen == [((), {"x": 1}), ((), {"x": 2})]


async def test_kwargs_called_name_and_fn_reach_fn() -> None:
    fn = Calls()
    rt = JournaledRuntime()
    async with rt.session("s"):
        await rt.step("call", fn.sync, name="n", fn="f")
    assert fn.seen == [((), {"name": "n", "fn": "f"})]


async def test_same_name_and_args_twice_in_one_run_runs_fn_once() -> None:
    fn = Calls("first")
    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await rt.step("poll", fn.sync, 1) == "first"
        fn.result = "second"
        assert await rt.step("poll", fn.sync, 1) == "first"
    assert fn.count == 1


async def test_same_name_with_different_args_runs_fn_again() -> None:
    seen: list[int] = []

    def double(x: int) -> int:
        seen.append(x)
        return 2 * x

    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await rt.step("double", double, 1) == 2
        assert await rt.step("double", double, 2) == 4
        assert await rt.step("double", double, 1) == 2
    assert seen == [1, 2]


async def test_idempotency_key_dedupes_calls_with_different_names_and_args() -> None:
    first, second = Calls("charged"), Calls("charged twice")
    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await rt.step("charge", first.sync, 10, idempotency_key="pay-1") == "charged"
        assert (
            await rt.step("refund", second.sync, 99, note="x", idempotency_key="pay-1") == "charged"
        )
    assert (first.count, second.count) == (1, 0)


async def test_idempotency_key_is_not_passed_to_fn() -> None:
    fn = Calls()
    rt = JournaledRuntime()
    async with rt.session("s"):
        await rt.step("call", fn.sync, 1, idempotency_key="k1", other=2)
    assert fn.seen == [((1,), {"other": 2})]


@pytest.mark.parametrize(("name", "key"), [("k:x", "x"), ("x", "x"), ("s:x", "x")])
async def test_idempotency_key_never_collides_with_a_plain_step_name(name: str, key: str) -> None:
    plain, keyed = Calls("plain"), Calls("keyed")
    rt = JournaledRuntime()
    async with rt.session("s"):
        assert await rt.step(name, plain.sync) == "plain"
        assert await rt.step("other", keyed.sync, idempotency_key=key) == "keyed"
    rt2 = JournaledRuntime()
    async with rt2.session("s"):
        assert await rt2.step("other", keyed.sync, idempotency_key=key) == "keyed"
        assert await rt2.step(name, plain.sync) == "plain"
    assert (plain.count, keyed.count) == (2, 2)


# -- recording rules ------------------------------------------------------------------------------


async def test_fn_exception_propagates_unchanged_and_records_nothing() -> None:
    rt, store = memory_runtime()
    error = ConnectionError("flaky")
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise error
        return "ok"

    async with rt.session("s"):
        with pytest.raises(ConnectionError) as info:
            await rt.step("call", flaky)
        assert info.value is error
        assert store.step_keys() == []
        assert await rt.step("call", flaky) == "ok"
    assert attempts == 2
    assert len(store.step_keys()) == 1


async def test_fn_exception_is_retried_by_the_next_run(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    attempts = 0

    def fails_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("boom")
        return "ok"

    rt = JournaledRuntime(store)
    with pytest.raises(RuntimeError, match="boom"):
        async with rt.session("s"):
            await rt.step("call", fails_once)
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("s"):
        assert await rt2.step("call", fails_once) == "ok"
    assert attempts == 2


async def test_step_cancelled_in_flight_records_nothing_and_cancellation_propagates() -> None:
    rt, store = memory_runtime()
    started = anyio.Event()
    reached_after_step: list[bool] = []
    scope = anyio.CancelScope()

    async def blocked() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    async def run() -> None:
        with scope:
            await rt.step("slow", blocked)
            reached_after_step.append(True)

    async with rt.session("s"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            scope.cancel()
        assert scope.cancelled_caught
        assert reached_after_step == []
        assert store.step_keys() == []
        assert await rt.step("slow", lambda: "ran") == "ran"


async def test_concurrent_calls_with_same_key_run_fn_once_and_share_result() -> None:
    rt = JournaledRuntime()
    release = anyio.Event()
    calls = 0
    results: list[Any] = []

    async def slow() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"n": 1}

    async def call() -> None:
        results.append(await rt.step("shared", slow))

    async with rt.session("s"), anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert calls == 1
    assert results == [{"n": 1}, {"n": 1}]


async def test_concurrent_same_key_second_caller_runs_fn_itself_when_first_fails() -> None:
    rt = JournaledRuntime()
    release = anyio.Event()
    calls = 0
    outcomes: list[Any] = []

    async def fails_first_time() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise ValueError("first attempt failed")
        return "second attempt"

    async def call() -> None:
        try:
            outcomes.append(await rt.step("shared", fails_first_time))
        except ValueError as exc:
            outcomes.append(exc)

    async with rt.session("s"), anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert calls == 1  # the second caller waits for the first
        release.set()
    assert calls == 2
    assert isinstance(outcomes[0], ValueError)
    assert outcomes[1] == "second attempt"


# -- values that cannot be encoded -----------------------------------------------------------------


async def test_unencodable_result_raises_value_encoding_error_and_journal_is_unchanged(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    rt = JournaledRuntime(store)
    async with rt.session("enc-1"):
        await rt.step("before", lambda: "kept")
        keys_before = store.step_keys() if isinstance(store, InMemoryJournalStore) else None
        with pytest.raises(ValueEncodingError) as info:
            await rt.step("make_lock", threading.Lock)
        if isinstance(store, InMemoryJournalStore):
            assert store.step_keys() == keys_before
    err = info.value
    assert err.session_id == "enc-1"
    assert err.step is not None
    assert "make_lock" in err.step
    assert "enc-1" in str(err)
    assert "make_lock" in str(err)
    assert "lock" in str(err)  # the type: _thread.lock

    calls = Calls("after reopen")
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session("enc-1"):
        assert await rt2.step("before", calls.sync) == "kept"
        assert await rt2.step("make_lock", calls.sync) == "after reopen"
    assert calls.count == 1  # "before" replayed; "make_lock" had left nothing behind


async def test_unencodable_lambda_result_names_session_step_and_type() -> None:
    rt, store = memory_runtime()
    async with rt.session("enc-2"):
        with pytest.raises(ValueEncodingError) as info:
            await rt.step("make_fn", lambda: lambda: 1)
        assert store.step_keys() == []
        # Nothing recorded in the open session either: the next call runs fn again.
        assert await rt.step("make_fn", lambda: "plain") == "plain"
    message = str(info.value)
    assert "enc-2" in message
    assert "make_fn" in message
    assert "function" in message  # the type: builtins.function
    assert info.value.session_id == "enc-2"


# -- context ---------------------------------------------------------------------------------------


async def test_session_id_is_visible_in_child_tasks(runtime: Runtime) -> None:
    seen: list[str | None] = []

    async def child() -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(runtime.current_session_id())

    assert runtime.current_session_id() is None
    async with runtime.session("parent"), anyio.create_task_group() as tg:
        tg.start_soon(child)
        tg.start_soon(child)
    assert seen == ["parent", "parent"]
    assert runtime.current_session_id() is None


async def test_steps_in_child_tasks_are_journaled_in_the_session() -> None:
    rt, store = memory_runtime()
    fn = Calls(1)
    async with rt.session("parent"), anyio.create_task_group() as tg:
        tg.start_soon(rt.step, "child_a", fn.sync)
        tg.start_soon(rt.step, "child_b", fn.sync)
    assert sorted(sid for sid, _ in store.step_keys()) == ["parent", "parent"]
    async with rt.session("parent"):
        await rt.step("child_a", fn.sync)
        await rt.step("child_b", fn.sync)
    assert fn.count == 2


async def test_outside_a_session_step_runs_fn_every_time_and_records_nothing() -> None:
    rt, store = memory_runtime()
    fn = Calls("x")
    assert await rt.step("free", fn.sync, 1) == "x"
    assert await rt.step("free", fn.async_, 1) == "x"
    assert await rt.step("free", fn.sync, 1, idempotency_key="k") == "x"
    assert fn.count == 3
    assert store.step_keys() == []


async def test_nested_contexts_of_one_id_share_state() -> None:
    store = CountingStore()
    rt = JournaledRuntime(store)
    fn = Calls("inner")
    async with rt.session("s") as outer:
        async with rt.session("s") as inner:
            assert inner is outer
            assert await rt.step("a", fn.sync) == "inner"
        assert rt.current_session_id() == "s"
        assert await rt.step("a", fn.sync) == "inner"
    assert fn.count == 1
    assert store.loads == 1


async def test_nested_contexts_of_one_id_yield_one_session_object(runtime: Runtime) -> None:
    async with runtime.session("s") as outer, runtime.session("s") as inner:
        assert inner is outer
        assert outer.id == "s"
    async with runtime.session("other") as other:
        assert other is not outer


async def test_concurrent_contexts_of_one_id_in_two_tasks_share_state() -> None:
    store = CountingStore()
    rt = JournaledRuntime(store)
    release = anyio.Event()
    calls = 0
    results: list[str] = []

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "done"

    async def worker() -> None:
        async with rt.session("s"):
            results.append(await rt.step("shared", slow))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        tg.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        release.set()
    # One in-flight table: the second context waited for the first context's call.
    assert calls == 1
    assert results == ["done", "done"]
    assert store.loads == 1


async def test_session_state_is_dropped_when_the_last_context_exits() -> None:
    store = CountingStore()
    rt = JournaledRuntime(store)
    async with rt.session("s"):
        async with rt.session("s"):
            pass
        assert store.loads == 1  # the outer context still holds the state
    async with rt.session("s"):
        pass
    assert store.loads == 2  # a fresh state, loaded again


async def test_cancelling_first_opener_during_load_does_not_fail_a_concurrent_opener() -> None:
    store = GatedLoadStore()
    rt = JournaledRuntime(store)
    first_scope = anyio.CancelScope()
    second: list[object] = []

    async def first() -> None:
        with first_scope:
            async with rt.session("s"):
                pass

    async def concurrent() -> None:
        try:
            async with rt.session("s"):
                second.append("opened")
        except BaseException as exc:  # must not happen; recorded to assert on, not re-raised
            second.append(type(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await store.loading.wait()
        tg.start_soon(concurrent)
        await anyio.wait_all_tasks_blocked()
        first_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert second == ["opened"]


async def test_cancelled_concurrent_opener_does_not_keep_session_state_alive() -> None:
    store = GatedLoadStore()
    rt = JournaledRuntime(store)
    waiter_scope = anyio.CancelScope()

    async def first() -> None:
        async with rt.session("s"):
            pass

    async def waiter() -> None:
        with waiter_scope:
            async with rt.session("s"):
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await store.loading.wait()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        waiter_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.loads == 1
    async with rt.session("s"):
        pass
    assert store.loads == 2  # every context has exited: the next one loads a fresh state


# -- exceptions and cancellation of the session body -----------------------------------------------


async def test_body_exception_comes_out_unchanged(runtime: Runtime) -> None:
    error = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input") as info:  # noqa: PT012 -- raised in body
        async with runtime.session("s"):
            await anyio.lowlevel.checkpoint()
            raise error
    assert type(info.value) is ValueError
    assert info.value is error
    await anyio.lowlevel.checkpoint()  # the task is not left cancelled
    assert runtime.current_session_id() is None


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt / SystemExit: a BaseException that is not an Exception."""


async def test_body_base_exception_comes_out_unchanged(runtime: Runtime) -> None:
    error = Interrupt()
    with pytest.raises(Interrupt) as info:  # noqa: PT012 -- raised in the session body
        async with runtime.session("s"):
            await anyio.lowlevel.checkpoint()
            raise error
    assert type(info.value) is Interrupt
    assert info.value is error
    async with runtime.session("s"):  # the state was released
        assert runtime.current_session_id() == "s"


async def test_body_cancelled_by_outer_scope_is_absorbed_by_that_scope(runtime: Runtime) -> None:
    reached: list[str] = []
    with anyio.CancelScope() as scope:
        async with runtime.session("s"):
            scope.cancel()
            await anyio.sleep_forever()
        reached.append("after session")  # pragma: no cover
    assert scope.cancelled_caught
    assert reached == []
    await anyio.lowlevel.checkpoint()
    async with runtime.session("s"):
        assert runtime.current_session_id() == "s"


# -- closing ---------------------------------------------------------------------------------------


async def test_closed_runtime_refuses_sessions_and_steps_and_closes_its_own_store() -> None:
    rt = JournaledRuntime()
    await rt.aclose()
    await rt.aclose()  # idempotent
    with pytest.raises(StoreClosedError) as info:
        async with rt.session("late"):
            pass  # pragma: no cover
    assert info.value.session_id == "late"
    with pytest.raises(StoreClosedError):
        await rt.step("free", lambda: 1)
    assert isinstance(rt.store, InMemoryJournalStore)
    with pytest.raises(StoreClosedError):
        await rt.store.get_step("late", "k")


async def test_step_in_open_session_after_runtime_aclose_raises_store_closed() -> None:
    rt = JournaledRuntime()
    fn = Calls()
    async with rt.session("open-1"):
        await rt.aclose()
        with pytest.raises(StoreClosedError) as info:
            await rt.step("after", fn.sync)
    assert info.value.session_id == "open-1"
    assert fn.count == 0


async def test_runtime_with_context_manager_closes_on_exit() -> None:
    async with JournaledRuntime() as rt, rt.session("s"):
        assert await rt.step("a", lambda: 1) == 1
    with pytest.raises(StoreClosedError):
        async with rt.session("s"):
            pass  # pragma: no cover


async def test_runtime_does_not_close_a_store_passed_to_it(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    rt = JournaledRuntime(store)
    async with rt.session("s"):
        await rt.step("a", lambda: "kept")
    await rt.aclose()
    rt2 = JournaledRuntime(store)
    fn = Calls()
    async with rt2.session("s"):
        assert await rt2.step("a", fn.sync) == "kept"
    assert fn.count == 0


async def test_closed_store_under_a_runtime_raises_store_closed_naming_the_session(
    store: JournalBackend,
) -> None:
    rt = JournaledRuntime(store)
    fn = Calls()
    async with rt.session("open-2"):
        await store.aclose()
        with pytest.raises(StoreClosedError) as in_session:
            await rt.step("after", fn.sync)
    assert in_session.value.session_id == "open-2"
    assert "open-2" in str(in_session.value)
    with pytest.raises(StoreClosedError) as at_open:
        async with rt.session("new-3"):
            pass  # pragma: no cover
    assert at_open.value.session_id == "new-3"
    assert "new-3" in str(at_open.value)
    assert fn.count == 0


# -- InProcRuntime, names, repr --------------------------------------------------------------------


async def test_inproc_runs_every_step_every_time() -> None:
    rt = InProcRuntime()
    fn = Calls("v")
    async with rt.session("s") as session:
        assert isinstance(session, InProcSession)
        assert await rt.step("a", fn.sync, 1) == "v"
        assert await rt.step("a", fn.async_, 1) == "v"
        assert await rt.step("b", fn.sync, idempotency_key="k") == "v"
        assert await rt.step("c", fn.sync, idempotency_key="k") == "v"
    async with rt.session("s"):
        await rt.step("a", fn.sync, 1)
    assert fn.count == 5
    assert fn.seen[0] == ((1,), {})


async def test_inproc_closed_runtime_refuses_sessions_and_steps() -> None:
    rt = InProcRuntime()
    await rt.aclose()
    await rt.aclose()
    with pytest.raises(StoreClosedError):
        async with rt.session("s"):
            pass  # pragma: no cover
    with pytest.raises(StoreClosedError):
        await rt.step("a", lambda: 1)


def test_runtime_names() -> None:
    assert InProcRuntime.name == "inproc"
    assert JournaledRuntime.name == "journaled"
    assert InProcRuntime().name == "inproc"
    assert JournaledRuntime().name == "journaled"


async def test_journaled_session_repr_shows_id_steps_and_pending_signals() -> None:
    async with JournaledRuntime() as rt, rt.session("order-7") as session:
        assert isinstance(session, JournaledSession)
        assert repr(session) == "<JournaledSession id='order-7' steps=0 pending_signals=0>"
        await rt.step("a", lambda: 1)
        await rt.step("b", lambda: 2)
        await session.deliver("approve", True)
        await rt.signal("order-7", "reject", False)
        assert repr(session) == "<JournaledSession id='order-7' steps=2 pending_signals=2>"


def test_session_rejects_empty_or_non_str_id() -> None:
    rt = JournaledRuntime()
    bad: list[Any] = ["", None, 42]
    for session_id in bad:
        with pytest.raises(TypeError):
            rt.session(session_id)

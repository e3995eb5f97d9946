"""Step policies: retries with backoff, per-attempt timeouts, deadlines, journaled failures, strict
replay, durable sleep, and the stream rules (retry only before the first chunk, timeout per pull).

Behaviour that depends on the journal runs on every store (memory, SQLite, Postgres) and both
event loops; "recorded" and "not recorded" are checked on a store object opened anew on the same
journal. Delays are tiny (``initial_delay=0.001``, ``jitter=0``) so the file runs in seconds.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import (
    InProcRuntime,
    JournaledRuntime,
    JournalEntry,
    JournalMismatchError,
    RetryPolicy,
    RuntimeJournalError,
    StepFailedError,
    StepPolicy,
    StepTimeoutError,
    with_policy,
)
from jeevesagent.runtime._core.keys import fingerprint, timer_journal_key
from jeevesagent.runtime._journal.backend import JournalBackend, SessionJournal

from .conftest import StoreFactory

ROOT = Path(__file__).resolve().parent.parent
SID = "s"

Runtime = InProcRuntime | JournaledRuntime


def fast(attempts: int = 3, **kwargs: Any) -> RetryPolicy:
    """A retry policy with (almost) no waiting."""
    return RetryPolicy(attempts=attempts, initial_delay=0.001, jitter=0, **kwargs)


class Flaky:
    """An async step function: the first ``failures`` calls raise ``error``, later calls return
    ``result``. Counts its calls and keeps the exceptions it raised."""

    def __init__(
        self,
        failures: int,
        result: Any = "ok",
        error: Callable[[str], BaseException] = ConnectionError,
    ) -> None:
        self.failures = failures
        self.result = result
        self.error = error
        self.calls = 0
        self.raised: list[BaseException] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return self.result


class Sleepy:
    """An async step function whose first ``slow`` calls sleep ``seconds``; later calls return at
    once. Counts its calls."""

    def __init__(self, slow: int = 10**9, seconds: float = 10.0, result: Any = "ok") -> None:
        self.slow = slow
        self.seconds = seconds
        self.result = result
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.slow:
            await anyio.sleep(self.seconds)
        await anyio.lowlevel.checkpoint()
        return self.result


async def journal(factory: StoreFactory, session_id: str = SID) -> SessionJournal:
    """What the journal holds for the session, read through a store object opened anew."""
    return await (await factory.new()).load_session(session_id)


def keys_of(table: dict[str, Any], name: str) -> list[str]:
    """The journal keys of the (stream) step ``name`` (any argument fingerprint)."""
    return [key for key in table if key.startswith(f"s:{name}:")]


# -- 1. retries -------------------------------------------------------------------------------


async def test_retried_step_returns_the_value_and_is_recorded_once(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(2, result={"hits": [1, 2]})
    fn = with_policy(flaky, retry=fast(3))
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        assert await rt.step("search", fn, "q") == {"hits": [1, 2]}
    assert flaky.calls == 3

    recorded = await journal(store_factory)
    assert len(keys_of(recorded.steps, "search")) == 1
    assert len(recorded.steps) == 1

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert await rt2.step("search", fn, "q") == {"hits": [1, 2]}
    assert flaky.calls == 3  # replayed, not run


async def test_exhausted_retries_raise_the_last_exception_unchanged_and_record_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(10)
    fn = with_policy(flaky, retry=fast(3))
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        with pytest.raises(ConnectionError) as caught:
            await rt.step("search", fn, "q")
    assert caught.value is flaky.raised[-1]
    assert str(caught.value) == "failure 3"
    assert flaky.calls == 3
    assert (await journal(store_factory)).steps == {}

    again = Flaky(0, result="second run")
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert await rt2.step("search", with_policy(again, retry=fast(3)), "q") == "second run"
    assert again.calls == 1


async def test_never_retry_types_are_not_retried_even_when_retry_on_matches() -> None:
    flaky = Flaky(5, error=PermissionError)
    fn = with_policy(flaky, retry=fast(5, retry_on=(OSError,), never_retry=(PermissionError,)))
    rt = JournaledRuntime()
    async with rt.session(SID):
        with pytest.raises(PermissionError):
            await rt.step("guarded", fn)
    assert flaky.calls == 1

    other = Flaky(2, error=ConnectionError)  # an OSError, not excluded: retried
    fn2 = with_policy(other, retry=fast(5, retry_on=(OSError,), never_retry=(PermissionError,)))
    async with rt.session(SID):
        assert await rt.step("guarded-2", fn2) == "ok"
    assert other.calls == 3


async def test_retry_on_types_limit_what_is_retried() -> None:
    rt = JournaledRuntime()
    policy = fast(5, retry_on=(ConnectionError, TimeoutError))
    wrong = Flaky(5, error=ValueError)
    right = Flaky(2, error=TimeoutError)
    async with rt.session(SID):
        with pytest.raises(ValueError, match="failure 1"):
            await rt.step("wrong", with_policy(wrong, retry=policy))
        assert await rt.step("right", with_policy(right, retry=policy)) == "ok"
    assert (wrong.calls, right.calls) == (1, 3)


async def test_retry_on_predicate_decides_what_is_retried() -> None:
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "failure 1" in str(exc)  # only the first failure is transient

    flaky = Flaky(5, error=RuntimeError)
    rt = JournaledRuntime()
    async with rt.session(SID):
        with pytest.raises(RuntimeError, match="failure 2"):
            await rt.step("pred", with_policy(flaky, retry=fast(5, retry_on=transient)))
    assert flaky.calls == 2
    assert seen == flaky.raised


class Abort(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt or SystemExit)."""


async def test_base_exceptions_that_are_not_exceptions_are_never_retried(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(5, error=Abort)
    policy = fast(5, retry_on=lambda exc: True)
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        with pytest.raises(Abort):
            await rt.step("abort", with_policy(flaky, retry=policy, journal_failures=True))
    assert flaky.calls == 1
    assert (await journal(store_factory)).steps == {}

    types_policy = fast(5, retry_on=(BaseException,))
    flaky2 = Flaky(5, error=Abort)
    rt2 = JournaledRuntime()
    async with rt2.session(SID):
        with pytest.raises(Abort):
            await rt2.step("abort", with_policy(flaky2, retry=types_policy))
    assert flaky2.calls == 1
    assert not types_policy.retries(Abort("x"))
    assert not types_policy.retries(KeyboardInterrupt())


async def test_runtime_default_policy_applies_to_plain_functions(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(2)
    rt = JournaledRuntime(store, policy=StepPolicy(retry=fast(3)))
    async with rt.session(SID):
        assert await rt.step("plain", flaky, 1) == "ok"
    assert flaky.calls == 3
    assert len(keys_of((await journal(store_factory)).steps, "plain")) == 1


async def test_with_policy_overrides_the_runtime_default_field_by_field() -> None:
    rt = JournaledRuntime(policy=StepPolicy(retry=fast(3), timeout=0.05))
    inherits_retry = Flaky(2)  # its policy sets only a timeout: retries come from the default
    no_retry = Flaky(2)  # its policy turns retries off: the default timeout still applies
    slow = Sleepy()
    async with rt.session(SID):
        assert await rt.step("a", with_policy(inherits_retry, timeout=5.0)) == "ok"
        with pytest.raises(ConnectionError):
            await rt.step("b", with_policy(no_retry, retry=RetryPolicy(attempts=1)))
        start = time.monotonic()
        with pytest.raises(StepTimeoutError):
            await rt.step("c", with_policy(slow, retry=RetryPolicy(attempts=1)))
        assert time.monotonic() - start < 1.0
    assert (inherits_retry.calls, no_retry.calls, slow.calls) == (3, 1, 1)

    # ...and the default's fields fill in what the attached policy leaves as None.
    attached = StepPolicy(timeout=5.0)
    assert attached.merged_over(StepPolicy(retry=fast(4), journal_failures=True)) == StepPolicy(
        retry=fast(4), timeout=5.0, journal_failures=True
    )
    combined = with_policy(inherits_retry, StepPolicy(retry=fast(2), timeout=1.0), timeout=2.0)
    assert combined.__jeevesagent_policy__ == StepPolicy(retry=fast(2), timeout=2.0)  # type: ignore[attr-defined]


async def test_with_policy_can_lift_a_default_timeout_and_turn_off_journal_failures() -> None:
    rt = JournaledRuntime(policy=StepPolicy(timeout=0.01, journal_failures=True))
    slow = Sleepy(seconds=0.05)
    flaky = Flaky(1, error=ValueError)
    async with rt.session(SID):
        # None means "inherit": an unbounded timeout is written as math.inf.
        assert await rt.step("slow", with_policy(slow, timeout=math.inf)) == "ok"
        with pytest.raises(ValueError, match="failure 1"):
            await rt.step("flaky", with_policy(flaky, journal_failures=False))
        assert await rt.step("flaky", with_policy(flaky, journal_failures=False)) == "ok"
    assert (slow.calls, flaky.calls) == (1, 2)


async def test_with_policy_twice_merges_field_by_field() -> None:
    flaky = Flaky(2)
    fn = with_policy(with_policy(flaky, retry=fast(3)), timeout=5.0)
    rt = JournaledRuntime()
    async with rt.session(SID):
        assert await rt.step("nested", fn) == "ok"
    assert flaky.calls == 3


@pytest.mark.parametrize("kind", ["inproc", "journaled"])
async def test_with_policy_as_a_decorator_retries_and_times_out(kind: str) -> None:
    calls: list[str] = []

    @with_policy(retry=fast(3))
    async def flaky(q: str, *, suffix: str = "") -> str:
        calls.append(q)
        await anyio.lowlevel.checkpoint()
        if len(calls) < 3:
            raise ConnectionError(f"failure {len(calls)}")
        return q + suffix

    @with_policy(StepPolicy(timeout=0.05, retry=RetryPolicy(attempts=1)))
    async def slow() -> str:
        await anyio.sleep(10)
        return "never"

    @with_policy
    def plain(x: int) -> int:
        return x + 1

    rt: Runtime = InProcRuntime() if kind == "inproc" else JournaledRuntime()
    async with rt.session(SID):
        assert await rt.step("flaky", flaky, "q", suffix="!") == "q!"
        with pytest.raises(StepTimeoutError):
            await rt.step("slow", slow)
        assert await rt.step("plain", plain, 1) == 2
    assert calls == ["q"] * 3
    assert (flaky.__name__, slow.__name__, plain.__name__) == ("flaky", "slow", "plain")


async def test_with_policy_decorator_forms_attach_the_same_policy_as_the_call_form() -> None:
    async def fn(x: int) -> int:
        return x

    # A StepPolicy given positionally is the policy, not the function; keywords override it.
    forms = [
        with_policy(fn, StepPolicy(timeout=1.0), retry=fast(2)),
        with_policy(StepPolicy(timeout=1.0), retry=fast(2))(fn),
        with_policy(retry=fast(2), timeout=1.0)(fn),
    ]
    for wrapped in forms:
        assert wrapped.__jeevesagent_policy__ == StepPolicy(retry=fast(2), timeout=1.0)  # type: ignore[attr-defined]
        assert await wrapped(7) == 7
    assert with_policy()(fn).__jeevesagent_policy__ == StepPolicy()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="one StepPolicy"):
        with_policy(StepPolicy(), StepPolicy())  # type: ignore[call-overload]


async def test_a_decorated_stream_producer_is_retried_before_its_first_chunk() -> None:
    producer = StreamProducer(["a", "b"], ["fail-first"])
    decorated = with_policy(retry=fast(2))(producer)
    rt = JournaledRuntime()
    async with rt.session(SID):
        assert [chunk async for chunk in rt.stream_step("s", decorated)] == ["a", "b"]
    assert producer.starts == 2


@pytest.mark.parametrize("kind", ["inproc", "journaled"])
async def test_keyword_arguments_named_like_policy_options_reach_fn(kind: str) -> None:
    got: list[dict[str, Any]] = []

    async def fn(
        q: str, *, retry: str, timeout: int, deadline: None, policy: str, journal_failures: bool
    ) -> dict[str, Any]:
        seen = {
            "q": q,
            "retry": retry,
            "timeout": timeout,
            "deadline": deadline,
            "policy": policy,
            "journal_failures": journal_failures,
        }
        got.append(seen)
        return seen

    kwargs: dict[str, Any] = {
        "retry": "not a policy",
        "timeout": 3,
        "deadline": None,
        "policy": "p",
        "journal_failures": False,
    }
    rt: Runtime = InProcRuntime() if kind == "inproc" else JournaledRuntime()
    async with rt.session(SID):
        plain = await rt.step("plain", fn, "q", **kwargs)
        wrapped = await rt.step("wrapped", with_policy(fn, retry=fast(2)), "q", **kwargs)
        keyed = await rt.step("keyed", fn, "q", idempotency_key="k-1", **kwargs)
    expected = {"q": "q", **kwargs}
    assert plain == wrapped == keyed == expected
    assert got == [expected] * 3  # idempotency_key is the only keyword kept by step


# -- 2. cancellation during a retry's backoff ---------------------------------------------------


async def test_cancelling_a_retry_backoff_stops_at_once_and_records_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(1)
    fn = with_policy(flaky, retry=RetryPolicy(attempts=3, initial_delay=10, jitter=0))
    rt = JournaledRuntime(store, policy=StepPolicy(journal_failures=True))

    async def run_step() -> None:
        await rt.step("backoff", fn, "q")

    async with rt.session(SID):
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_step)
            await anyio.wait_all_tasks_blocked()  # the step sleeps in its 10 s backoff
            assert flaky.calls == 1
            tg.cancel_scope.cancel()
        elapsed = time.monotonic() - start
    assert elapsed < 1.0
    assert flaky.calls == 1
    assert (await journal(store_factory)).steps == {}


# -- 3. timeouts and deadlines ------------------------------------------------------------------


async def test_attempt_timeout_raises_step_timeout_error_and_records_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    slow = Sleepy()
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        start = time.monotonic()
        with pytest.raises(StepTimeoutError) as caught:
            await rt.step("slow", with_policy(slow, timeout=0.05), 1)
        assert time.monotonic() - start < 1.0
    err = caught.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, RuntimeJournalError)
    assert (err.session_id, err.step) == (SID, "slow")
    assert "0.05" in str(err)
    assert slow.calls == 1
    assert (await journal(store_factory)).steps == {}
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, StepTimeoutError)
    assert (again.session_id, again.step, str(again)) == (SID, "slow", str(err))


async def test_a_timed_out_step_records_nothing_even_with_journal_failures(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    """As documented: a timeout says how long an attempt was allowed, not the step's outcome,
    so the next run tries again -- with journal_failures=True too."""
    slow = Sleepy()
    rt = JournaledRuntime(store, policy=StepPolicy(journal_failures=True))
    async with rt.session(SID):
        with pytest.raises(StepTimeoutError):
            await rt.step("slow", with_policy(slow, timeout=0.05), 1)
    assert (await journal(store_factory)).steps == {}
    async with JournaledRuntime(await store_factory.new()) as rt2, rt2.session(SID):
        assert await rt2.step("slow", with_policy(Sleepy(seconds=0), timeout=5), 1) == "ok"


async def test_timed_out_attempt_is_retried_and_a_fast_attempt_is_recorded(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    slow_once = Sleepy(slow=1)
    fn = with_policy(slow_once, timeout=0.05, retry=fast(3))
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        start = time.monotonic()
        assert await rt.step("fetch", fn, "url") == "ok"
        assert time.monotonic() - start < 1.0
    assert slow_once.calls == 2
    assert len(keys_of((await journal(store_factory)).steps, "fetch")) == 1

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert await rt2.step("fetch", fn, "url") == "ok"
    assert slow_once.calls == 2


async def test_deadline_bounds_the_whole_step_across_retries(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    always = Flaky(10**9)
    retry = RetryPolicy(attempts=10**6, initial_delay=0.02, backoff=1.0, jitter=0)
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        start = time.monotonic()
        with pytest.raises(StepTimeoutError) as caught:
            await rt.step("retrying", with_policy(always, retry=retry, deadline=0.2))
        elapsed = time.monotonic() - start
    assert 0.15 < elapsed < 1.0
    assert always.calls > 2
    assert (caught.value.session_id, caught.value.step) == (SID, "retrying")
    assert "deadline" in str(caught.value)

    # A deadline also ends an attempt that would otherwise run on (no per-attempt timeout).
    slow = Sleepy()
    async with rt.session(SID):
        start = time.monotonic()
        with pytest.raises(StepTimeoutError):
            await rt.step("stuck", with_policy(slow, retry=fast(5), deadline=0.2))
        assert time.monotonic() - start < 1.0
    assert slow.calls == 1
    assert (await journal(store_factory)).steps == {}


async def test_policies_apply_outside_a_session_too() -> None:
    rt = JournaledRuntime()
    flaky = Flaky(2)
    assert await rt.step("outside", with_policy(flaky, retry=fast(3))) == "ok"
    assert flaky.calls == 3
    with pytest.raises(StepTimeoutError) as caught:
        await rt.step("outside-slow", with_policy(Sleepy(), timeout=0.05))
    assert (caught.value.session_id, caught.value.step) == (None, "outside-slow")


# -- 4. journaled failures ----------------------------------------------------------------------


class LockedError(Exception):
    """An exception that holds a lock: it cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


async def test_journaled_failure_replays_the_same_exception_without_running_fn(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(10**9, error=ValueError)
    fn = with_policy(flaky, retry=fast(2), journal_failures=True)
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        with pytest.raises(ValueError, match="failure 2") as first:
            await rt.step("validate", fn, {"order": 7})
        assert first.value is flaky.raised[-1]  # the first run sees the exception unchanged
        with pytest.raises(ValueError, match="failure 2"):  # same run: not run again either
            await rt.step("validate", fn, {"order": 7})
    assert flaky.calls == 2
    assert len(keys_of((await journal(store_factory)).steps, "validate")) == 1

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        with pytest.raises(ValueError, match="failure 2") as replayed:
            await rt2.step("validate", fn, {"order": 7})
        with pytest.raises(ValueError, match="failure 2"):  # the outcome, whatever the policy
            await rt2.step("validate", flaky, {"order": 7})
    assert type(replayed.value) is ValueError
    assert replayed.value.args == ("failure 2",)
    assert flaky.calls == 2


async def test_journaled_failure_from_the_runtime_default_policy(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(10**9, error=KeyError)
    rt = JournaledRuntime(store, policy=StepPolicy(journal_failures=True))
    async with rt.session(SID):
        with pytest.raises(KeyError):
            await rt.step("lookup", flaky, "sku-1")
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        with pytest.raises(KeyError) as replayed:
            await rt2.step("lookup", flaky, "sku-1")
    assert replayed.value.args == ("failure 1",)
    assert flaky.calls == 1


@pytest.mark.parametrize("kind", ["local-class", "holds-a-lock"])
async def test_unpicklable_failure_replays_as_step_failed_error(
    kind: str, store: JournalBackend, store_factory: StoreFactory
) -> None:
    class LocalError(Exception):
        pass

    error: type[Exception] = LocalError if kind == "local-class" else LockedError
    flaky = Flaky(10**9, error=error)
    fn = with_policy(flaky, journal_failures=True)
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        with pytest.raises(error) as first:
            await rt.step("charge", fn, 42)
    assert first.value is flaky.raised[-1]

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        with pytest.raises(StepFailedError) as replayed:
            await rt2.step("charge", fn, 42)
    assert flaky.calls == 1
    err = replayed.value
    assert err.type_name == f"{error.__module__}.{error.__qualname__}"
    assert err.original_message == "failure 1"
    assert (err.session_id, err.step) == (SID, "charge")
    assert error.__name__ in str(err)
    assert "failure 1" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (again.type_name, again.original_message, again.session_id, again.step) == (
        err.type_name,
        "failure 1",
        SID,
        "charge",
    )


async def test_cancellation_is_never_journaled_as_a_failure(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    slow = Sleepy()
    fn = with_policy(slow, journal_failures=True, retry=fast(3))
    rt = JournaledRuntime(store)

    async def run_step() -> None:
        await rt.step("slow", fn)

    async with rt.session(SID):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_step)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        with anyio.move_on_after(0.05):  # a timeout of the caller is a cancellation too
            await rt.step("slow", fn)
    assert slow.calls == 2
    assert (await journal(store_factory)).steps == {}

    fast_now = Sleepy(slow=0)
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert await rt2.step("slow", with_policy(fast_now, journal_failures=True)) == "ok"
    assert fast_now.calls == 1


class DictStore:
    """A third-party store: only the five published methods."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], JournalEntry] = {}
        self.streams: dict[tuple[str, str], list[Any]] = {}

    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        return self.steps.get((session_id, step_name))

    async def put_step(self, session_id: str, step_name: str, value: Any) -> None:
        self.steps.setdefault((session_id, step_name), JournalEntry(value, time.time()))

    async def get_stream(self, session_id: str, step_name: str) -> list[Any] | None:
        return self.streams.get((session_id, step_name))

    async def put_stream(self, session_id: str, step_name: str, chunks: list[Any]) -> None:
        self.streams.setdefault((session_id, step_name), list(chunks))

    async def aclose(self) -> None:
        pass


async def test_journaled_failures_and_sleep_work_with_a_third_party_store() -> None:
    store = DictStore()
    flaky = Flaky(10**9, error=ValueError)
    fn = with_policy(flaky, journal_failures=True, retry=fast(2))
    for _ in range(2):
        rt = JournaledRuntime(store)
        async with rt.session(SID):
            with pytest.raises(ValueError, match="failure 2"):
                await rt.step("validate", fn)
            start = time.monotonic()
            await rt.sleep("nap", 0.05)
            slept = time.monotonic() - start
    assert flaky.calls == 2
    assert slept < 0.04  # the second run's wake-up time had passed
    assert (SID, timer_journal_key("nap")) in store.steps


async def test_without_journal_failures_a_failure_records_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    flaky = Flaky(1, error=ValueError)
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        with pytest.raises(ValueError, match="failure 1"):
            await rt.step("validate", with_policy(flaky, retry=RetryPolicy(attempts=1)), 1)
    assert (await journal(store_factory)).steps == {}
    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert await rt2.step("validate", flaky, 1) == "ok"  # the next run runs it again
    assert flaky.calls == 2


# -- 5. strict replay ---------------------------------------------------------------------------


async def test_strict_replay_raises_journal_mismatch_on_other_arguments(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    fn = Flaky(0, result="fetched")
    rt = JournaledRuntime(store, strict=True)
    async with rt.session(SID):
        assert await rt.step("fetch", fn, 1) == "fetched"
    assert fn.calls == 1

    strict = JournaledRuntime(await store_factory.new(), strict=True)
    async with strict.session(SID):
        # "fetch" with other arguments while the recorded fetch(1) has not replayed yet: the
        # code no longer takes the path it took.
        with pytest.raises(JournalMismatchError) as caught:
            await strict.step("fetch", fn, 2)
        assert await strict.step("fetch", fn, 1) == "fetched"  # same arguments: replays
        assert await strict.step("other", fn, 3) == "fetched"  # a new name is a new step
    assert fn.calls == 2  # only "other" ran
    err = caught.value
    assert (err.session_id, err.step) == (SID, "fetch")
    message = str(err)
    for part in (repr(SID), repr("fetch"), fingerprint((1,), {}), fingerprint((2,), {})):
        assert part in message

    lenient = JournaledRuntime(await store_factory.new())
    async with lenient.session(SID):
        assert await lenient.step("fetch", fn, 2) == "fetched"  # runs, as a new step
    assert fn.calls == 3
    assert len(keys_of((await journal(store_factory)).steps, "fetch")) == 2


async def test_strict_replay_allows_one_name_with_other_arguments_past_the_replay(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    """The README's pattern -- one step name, one call per input -- works in strict mode: on a
    first run, and on a replay that goes on to new inputs once the recorded ones replayed."""
    fn = Flaky(0, result="fetched")
    async with JournaledRuntime(store, strict=True) as rt, rt.session(SID):
        for url in ("a", "b"):
            assert await rt.step("fetch", fn, url) == "fetched"
    assert fn.calls == 2
    async with (
        JournaledRuntime(await store_factory.new(), strict=True) as rt,
        rt.session(SID),
    ):
        for url in ("a", "b", "c"):  # a and b replay (in any order), then c is new work
            assert await rt.step("fetch", fn, url) == "fetched"
    assert fn.calls == 3


async def test_strict_replay_also_covers_stream_steps() -> None:
    async def produce(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await anyio.lowlevel.checkpoint()
            yield i

    rt = JournaledRuntime(strict=True)
    async with rt.session(SID):
        assert [c async for c in rt.stream_step("count", produce, 2)] == [0, 1]
    async with rt.session(SID):
        with pytest.raises(JournalMismatchError):
            _ = [c async for c in rt.stream_step("count", produce, 3)]


async def test_strict_replay_does_not_confuse_names_that_extend_another_with_a_colon() -> None:
    rt = JournaledRuntime(strict=True)
    async with rt.session(SID):
        assert await rt.step("fetch:user", Flaky(0, result="user"), 1) == "user"
        assert await rt.step("fetch", Flaky(0, result="plain"), 1) == "plain"


# -- 6. durable sleep ---------------------------------------------------------------------------


async def test_durable_sleep_records_its_wake_up_time(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        before = time.time()
        start = time.monotonic()
        await rt.sleep("cool-off", 0.3)
        slept = time.monotonic() - start
        after = time.time()
    assert 0.25 < slept < 1.0
    entry = await (await store_factory.new()).get_step(SID, timer_journal_key("cool-off"))
    assert entry is not None
    assert before + 0.3 <= entry.value <= after + 0.01

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        start = time.monotonic()
        await rt2.sleep("cool-off", 0.3)  # the wake-up time has passed: returns at once
        assert time.monotonic() - start < 0.1


async def test_sleep_outside_a_session_is_a_plain_sleep() -> None:
    rt = JournaledRuntime()
    for _ in range(2):
        start = time.monotonic()
        await rt.sleep("nap", 0.05)
        assert time.monotonic() - start >= 0.04
    assert rt.store.step_keys() == []  # type: ignore[attr-defined]


async def test_inproc_sleep_sleeps_every_time() -> None:
    rt = InProcRuntime()
    async with rt.session(SID):
        for _ in range(2):
            start = time.monotonic()
            await rt.sleep("nap", 0.05)
            assert time.monotonic() - start >= 0.04


SLEEPER = textwrap.dedent(
    """
    import sys, time
    import anyio
    from jeevesagent.runtime import JournaledRuntime, SqliteJournalStore

    path, backend = sys.argv[1:3]

    async def main():
        async with SqliteJournalStore(path) as store:
            rt = JournaledRuntime(store)
            async with rt.session("napper"):
                print("sleeping", flush=True)
                start = time.monotonic()
                await rt.sleep("nap", 2.0)
                print(f"slept {time.monotonic() - start:.3f}", flush=True)

    anyio.run(main, backend=backend)
    """
)


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the child printed nothing in time"
    return proc.stdout.readline().strip()


def run_sleeper(script: Path, journal_path: Path, backend: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(journal_path), backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "sleeping", done.stdout
    assert lines[1].startswith("slept "), done.stdout
    return float(lines[1].removeprefix("slept "))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_durable_sleep_resumes_after_sigkill_sqlite(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    journal_path = tmp_path / "journal" / "nap.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(journal_path), backend],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert read_line(proc) == "sleeping", (tmp_path / "stderr.txt").read_text()
            started = time.monotonic()  # the wake-up time (2 s from about now) is journaled
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    resumed = run_sleeper(script, journal_path, backend)
    # Only what was left of the 2 s: less than all of it, and not ending before the journaled
    # wake-up time (however long the new interpreter took to start on a loaded machine).
    assert resumed < 1.8
    assert time.monotonic() - started > 1.9
    third = run_sleeper(script, journal_path, backend)
    assert third < 0.2  # the wake-up time has passed


# -- 7. streams ---------------------------------------------------------------------------------


class StreamProducer:
    """An async-generator producer. ``plan[i]`` says what start number ``i`` does: ``"ok"`` yields
    every chunk, ``"fail-first"`` raises before the first chunk, ``"fail-after"`` raises after the
    first chunk, ``"stall-first"``/``"stall-after"`` sleep 10 s before/after the first chunk.
    Starts beyond the plan do ``"ok"``."""

    def __init__(self, chunks: list[Any], plan: list[str]) -> None:
        self.chunks = chunks
        self.plan = plan
        self.starts = 0
        self.closed = 0

    async def __call__(self, *args: Any) -> AsyncIterator[Any]:
        self.starts += 1
        mode = self.plan[self.starts - 1] if self.starts <= len(self.plan) else "ok"
        try:
            for index, chunk in enumerate(self.chunks):
                await anyio.lowlevel.checkpoint()
                if index == 0 and mode == "fail-first":
                    raise ConnectionError("before the first chunk")
                if index == 0 and mode == "stall-first":
                    await anyio.sleep(10)
                if index == 1 and mode == "fail-after":
                    raise ConnectionError("after the first chunk")
                if index == 1 and mode == "stall-after":
                    await anyio.sleep(10)
                yield chunk
        finally:
            self.closed += 1


async def consume(stream: AsyncIterator[Any], seen: list[Any]) -> None:
    """Consume ``stream``, keeping every chunk it delivered in ``seen``."""
    async for chunk in stream:
        seen.append(chunk)


async def test_stream_failing_before_its_first_chunk_is_retried_and_recorded_once(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    producer = StreamProducer(["a", "b", "c"], ["fail-first", "fail-first"])
    fn = with_policy(producer, retry=fast(3))
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        assert [chunk async for chunk in rt.stream_step("tokens", fn, "p")] == ["a", "b", "c"]
    assert producer.starts == 3
    assert producer.closed == 3
    recorded = await journal(store_factory)
    assert len(keys_of(recorded.streams, "tokens")) == 1
    assert recorded.steps == {}

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert [chunk async for chunk in rt2.stream_step("tokens", fn, "p")] == ["a", "b", "c"]
    assert producer.starts == 3


async def test_stream_failing_while_opening_is_retried() -> None:
    opens = 0

    async def chunks() -> AsyncIterator[str]:
        for chunk in ("a", "b"):
            await anyio.lowlevel.checkpoint()
            yield chunk

    async def open_stream() -> AsyncIterator[str]:
        nonlocal opens
        opens += 1
        await anyio.lowlevel.checkpoint()  # e.g. connecting to the API
        if opens == 1:
            raise ConnectionError("could not connect")
        return chunks()

    rt = JournaledRuntime()
    async with rt.session(SID):
        got = [c async for c in rt.stream_step("tokens", with_policy(open_stream, retry=fast(3)))]
    assert got == ["a", "b"]
    assert opens == 2


async def test_stream_failing_after_the_first_chunk_is_not_retried(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    producer = StreamProducer(["a", "b", "c"], ["fail-after"])
    fn = with_policy(producer, retry=fast(5))
    rt = JournaledRuntime(store)
    seen: list[str] = []
    async with rt.session(SID):
        with pytest.raises(ConnectionError, match="after the first chunk"):
            await consume(rt.stream_step("tokens", fn, "p"), seen)
    assert seen == ["a"]
    assert producer.starts == 1
    assert producer.closed == 1
    assert (await journal(store_factory)).streams == {}

    rt2 = JournaledRuntime(await store_factory.new())
    async with rt2.session(SID):
        assert [chunk async for chunk in rt2.stream_step("tokens", fn, "p")] == ["a", "b", "c"]
    assert producer.starts == 2  # nothing was recorded: the next run runs the producer


async def test_stream_pull_timeout_raises_and_records_nothing(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    producer = StreamProducer(["a", "b", "c"], ["stall-after"])
    fn = with_policy(producer, timeout=0.05, retry=fast(3))
    rt = JournaledRuntime(store)
    seen: list[str] = []
    async with rt.session(SID):
        start = time.monotonic()
        with pytest.raises(StepTimeoutError) as caught:
            await consume(rt.stream_step("tokens", fn, "p"), seen)
        assert time.monotonic() - start < 1.0
    assert seen == ["a"]
    assert producer.starts == 1  # the stall came after the first chunk: not retried
    assert producer.closed == 1
    assert (caught.value.session_id, caught.value.step) == (SID, "tokens")
    assert isinstance(caught.value, TimeoutError)
    assert (await journal(store_factory)).streams == {}


async def test_stream_stalling_before_its_first_chunk_times_out_and_is_retried(
    store: JournalBackend, store_factory: StoreFactory
) -> None:
    producer = StreamProducer(["a", "b"], ["stall-first"])
    fn = with_policy(producer, timeout=0.05, retry=fast(3))
    rt = JournaledRuntime(store)
    async with rt.session(SID):
        start = time.monotonic()
        assert [chunk async for chunk in rt.stream_step("tokens", fn)] == ["a", "b"]
        assert time.monotonic() - start < 1.0
    assert producer.starts == 2
    assert len(keys_of((await journal(store_factory)).streams, "tokens")) == 1


@pytest.mark.parametrize("kind", ["inproc", "journaled"])
async def test_a_slow_consumer_does_not_trigger_the_pull_timeout(kind: str) -> None:
    producer = StreamProducer(["a", "b", "c"], [])
    fn = with_policy(producer, timeout=0.05)
    rt: Runtime = InProcRuntime() if kind == "inproc" else JournaledRuntime()
    seen: list[str] = []
    async with rt.session(SID):
        async for chunk in rt.stream_step("tokens", fn):
            seen.append(chunk)
            await anyio.sleep(0.1)  # twice the timeout, between pulls
    assert seen == ["a", "b", "c"]
    assert producer.starts == 1
    if isinstance(rt, JournaledRuntime):
        recorded = await rt.store.load_session(SID)  # type: ignore[attr-defined]
        assert len(keys_of(recorded.streams, "tokens")) == 1


# -- 8. InProcRuntime ---------------------------------------------------------------------------


async def test_inproc_runtime_honours_retry_and_timeout() -> None:
    rt = InProcRuntime()
    flaky = Flaky(2)
    slow = Sleepy(slow=1)
    async with rt.session(SID):
        assert await rt.step("retry", with_policy(flaky, retry=fast(3))) == "ok"
        start = time.monotonic()
        with pytest.raises(StepTimeoutError) as caught:
            await rt.step("slow", with_policy(slow, timeout=0.05))
        assert time.monotonic() - start < 1.0
        assert await rt.step("slow", with_policy(slow, timeout=0.05)) == "ok"  # not journaled
    assert flaky.calls == 3
    assert slow.calls == 2
    assert (caught.value.session_id, caught.value.step) == (SID, "slow")

    exhausted = Flaky(5)
    with pytest.raises(ConnectionError) as last:  # outside a session too
        await rt.step("retry", with_policy(exhausted, retry=fast(2)))
    assert last.value is exhausted.raised[-1]
    assert exhausted.calls == 2


async def test_inproc_runtime_default_policy_and_deadline() -> None:
    rt = InProcRuntime(policy=StepPolicy(retry=fast(3)))
    flaky = Flaky(2)
    async with rt.session(SID):
        assert await rt.step("plain", flaky) == "ok"
        start = time.monotonic()
        with pytest.raises(StepTimeoutError):
            await rt.step("stuck", with_policy(Sleepy(), deadline=0.1))
        assert time.monotonic() - start < 1.0
    assert flaky.calls == 3


async def test_inproc_streams_follow_the_same_rules() -> None:
    rt = InProcRuntime()
    before = StreamProducer(["a", "b"], ["fail-first"])
    after = StreamProducer(["a", "b"], ["fail-after"])
    stall = StreamProducer(["a", "b"], ["stall-after"])
    async with rt.session(SID):
        got = [c async for c in rt.stream_step("t1", with_policy(before, retry=fast(3)))]
        assert got == ["a", "b"]
        seen: list[str] = []
        with pytest.raises(ConnectionError):
            await consume(rt.stream_step("t2", with_policy(after, retry=fast(3))), seen)
        assert seen == ["a"]
        with pytest.raises(StepTimeoutError):
            await consume(rt.stream_step("t3", with_policy(stall, timeout=0.05)), [])
    assert (before.starts, after.starts, stall.starts) == (2, 1, 1)
    assert (before.closed, after.closed, stall.closed) == (2, 1, 1)


async def test_inproc_ignores_journal_failures_there_is_no_journal() -> None:
    rt = InProcRuntime()
    flaky = Flaky(1, error=ValueError)
    fn = with_policy(flaky, journal_failures=True)
    async with rt.session(SID):
        with pytest.raises(ValueError, match="failure 1"):
            await rt.step("validate", fn)
        assert await rt.step("validate", fn) == "ok"
    assert flaky.calls == 2


# -- policy objects -----------------------------------------------------------------------------


def test_retry_policy_delays_grow_by_backoff_up_to_max_delay() -> None:
    policy = RetryPolicy(attempts=6, initial_delay=0.5, backoff=2.0, max_delay=3.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittery = RetryPolicy(initial_delay=1.0, jitter=0.5)
    assert all(0.5 <= jittery.delay(1) <= 1.5 for _ in range(50))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"initial_delay": -1},
        {"max_delay": -1},
        {"backoff": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_retry_policy_rejects_invalid_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_with_policy_leaves_the_function_unchanged() -> None:
    def fn(x: int) -> int:
        return x + 1

    wrapped = with_policy(fn, retry=fast(2))
    assert wrapped is not fn
    assert wrapped(1) == 2
    assert wrapped.__name__ == "fn"
    assert not hasattr(fn, "__jeevesagent_policy__")

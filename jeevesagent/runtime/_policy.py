"""Step policies: retries with backoff, per-attempt timeouts, overall deadlines, journaled failures,
and the attempts loop that applies them (:func:`attempts`, for steps and stream steps alike).

A policy never travels as a keyword argument of ``step`` (``idempotency_key`` stays its only
reserved keyword, every other keyword goes to ``fn``). It is attached to the step function with
:func:`with_policy` -- ``rt.step("search", with_policy(search, retry=RetryPolicy(attempts=5)), q)``
-- or as a decorator on its definition (``@with_policy(retry=RetryPolicy(attempts=5))``), or set as
the runtime's default (``JournaledRuntime(..., policy=StepPolicy(...))``); a policy on the function
overrides the default field by field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pickle
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from ._errors import RuntimeJournalError

T = TypeVar("T")
P = ParamSpec("P")

__all__ = [
    "JournaledFailure",
    "RetryPolicy",
    "StepFailedError",
    "StepPolicy",
    "StepTimeoutError",
    "attempts",
    "policy_of",
    "run_with_policy",
    "with_policy",
]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is retried.

    :param attempts: total tries, the first included (1 = no retry)
    :param initial_delay: seconds before the second try
    :param backoff: each later delay is the previous one times this
    :param max_delay: upper bound of one delay
    :param jitter: each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``
    :param retry_on: exception types that are retried, or a predicate ``exc -> bool``
    :param never_retry: exception types that are never retried (checked first)

    Cancellation is never retried. Delays sleep on the event loop, so cancelling the step stops
    the retry loop at once.
    """

    attempts: int = 3
    initial_delay: float = 0.5
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (Exception,)
    never_retry: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy delays must be >= 0 and backoff >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be between 0 and 1")

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried (attempts left aside)."""
        if isinstance(exc, self.never_retry) or not isinstance(exc, Exception):
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.backoff ** (attempt - 1))
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)  # jitter, not cryptography
        return max(0.0, base)


@dataclass(frozen=True)
class StepPolicy:
    """What the runtime does around a step's function. ``None`` fields inherit the default.

    :param retry: a :class:`RetryPolicy`
    :param timeout: seconds per attempt; an attempt that runs longer is cancelled and counts as
        a failure raising :class:`StepTimeoutError` (which may be retried)
    :param deadline: seconds for the whole step, retries and their delays included
    :param journal_failures: record a step that failed for good, so a replay raises the same
        failure without running the step again
    """

    retry: RetryPolicy | None = None
    timeout: float | None = None
    deadline: float | None = None
    journal_failures: bool | None = None

    def merged_over(self, default: StepPolicy) -> StepPolicy:
        """This policy, with ``default``'s value wherever this one has ``None``."""
        return StepPolicy(
            **{
                f.name: getattr(self, f.name)
                if getattr(self, f.name) is not None
                else getattr(default, f.name)
                for f in dataclasses.fields(self)
            }
        )


_ATTR = "__jeevesagent_policy__"


@overload
def with_policy(
    fn: Callable[P, T],
    policy: StepPolicy | None = None,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    journal_failures: bool | None = None,
) -> Callable[P, T]: ...
@overload
def with_policy(
    policy: StepPolicy | None = None,
    /,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    journal_failures: bool | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def with_policy(
    fn: Callable[P, T] | StepPolicy | None = None,
    policy: StepPolicy | None = None,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    journal_failures: bool | None = None,
) -> Callable[P, T] | Callable[[Callable[P, T]], Callable[P, T]]:
    """Return ``fn`` with a step policy attached (``fn`` itself is not changed); without ``fn``,
    a decorator that does that. The result has ``fn``'s signature, for type checkers too.

    ``rt.step("fetch", with_policy(fetch, retry=RetryPolicy(attempts=5), timeout=10), url)``, or::

        @with_policy(retry=RetryPolicy(attempts=5), timeout=10)  # or @with_policy(StepPolicy(...))
        async def fetch(url: str) -> bytes: ...
    """
    if fn is None or isinstance(fn, StepPolicy):
        if fn is not None and policy is not None:
            raise TypeError("with_policy() takes one StepPolicy, got two")
        outer = fn if fn is not None else policy

        def decorate(f: Callable[P, T]) -> Callable[P, T]:
            return with_policy(
                f,
                outer,
                retry=retry,
                timeout=timeout,
                deadline=deadline,
                journal_failures=journal_failures,
            )

        return decorate
    extra = StepPolicy(retry, timeout, deadline, journal_failures)
    combined = extra.merged_over(policy) if policy is not None else extra
    inner = policy_of(fn)
    if inner is not None:  # with_policy applied twice: merge, the outer one winning
        combined = combined.merged_over(inner)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return fn(*args, **kwargs)

    setattr(wrapper, _ATTR, combined)
    return wrapper


def policy_of(fn: Callable[..., Any]) -> StepPolicy | None:
    return getattr(fn, _ATTR, None)


class StepTimeoutError(RuntimeJournalError, TimeoutError):
    """An attempt of a step ran past its ``timeout``, or the step past its ``deadline``."""


class StepFailedError(RuntimeJournalError):
    """Replay of a journaled failure whose exception could not be rebuilt.

    :ivar type_name: the qualified name of the original exception type
    :ivar original_message: its ``str()``
    """

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None = None,
        step: str | None = None,
        type_name: str = "",
        original_message: str = "",
    ) -> None:
        super().__init__(message, session_id=session_id, step=step)
        self.type_name = type_name
        self.original_message = original_message

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_failed,
            (self.message, self.session_id, self.step, self.type_name, self.original_message),
        )


def _rebuild_failed(
    message: str, session_id: str | None, step: str | None, type_name: str, original: str
) -> StepFailedError:
    return StepFailedError(
        message, session_id=session_id, step=step, type_name=type_name, original_message=original
    )


async def attempts(
    call: Callable[[], Awaitable[T]],
    retry: RetryPolicy | None,
    *,
    timeout: float | None = None,
    timed_out: Callable[[int], BaseException] | None = None,
    deadline: float | None = None,
    expired: Callable[[int], BaseException] | None = None,
    may_retry: Callable[[BaseException], bool] | None = None,
    before_retry: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """The attempts loop -- the only one of the runtime: await ``call()`` until it returns.

    Each attempt runs under ``timeout`` (an attempt that runs longer is cancelled and fails with
    ``timed_out(attempt)``); a failed attempt is tried again, after ``retry``'s backoff, while
    ``retry`` and ``may_retry`` allow it, ``before_retry()`` running first; the whole loop, its
    delays included, runs under ``deadline`` (then ``expired(attempts made)`` is raised).

    Steps run their function here under the step policy (:func:`run_with_policy`). A stream step
    opens its producer here, and takes each chunk here with the timeout bounding that one pull
    (never a span across the consumer's ``yield``, so a stream has no deadline) and a retry --
    with a new producer -- only before its first chunk reached the consumer.

    Cancellation from outside is never retried or converted: it propagates at once, also from a
    backoff sleep.
    """
    retry = retry or _NO_RETRY
    attempt = 0
    scope: contextlib.AbstractContextManager[Any] = (
        anyio.move_on_after(deadline) if deadline is not None else contextlib.nullcontext()
    )
    with scope:
        while True:
            attempt += 1
            try:
                if timeout is None:
                    return await call()
                with anyio.move_on_after(timeout):
                    return await call()
                assert timed_out is not None
                raise timed_out(attempt)
            except Exception as exc:
                if (
                    attempt >= retry.attempts
                    or not retry.retries(exc)
                    or (may_retry is not None and not may_retry(exc))
                ):
                    raise
                if before_retry is not None:
                    await before_retry()
                await anyio.sleep(retry.delay(attempt))
    assert expired is not None
    raise expired(attempt)


async def run_with_policy(
    call: Callable[[], Awaitable[T]],
    policy: StepPolicy,
    *,
    session_id: str | None,
    step: str,
) -> T:
    """Await a step's ``call()`` under ``policy``: per-attempt timeout, retries with backoff,
    deadline (see :func:`attempts`)."""

    def timed_out(attempt: int) -> StepTimeoutError:
        return StepTimeoutError(
            f"session {session_id!r}, step {step!r}: attempt {attempt} ran longer than its "
            f"timeout of {policy.timeout} s and was cancelled; nothing was recorded.",
            session_id=session_id,
            step=step,
        )

    def expired(made: int) -> StepTimeoutError:
        return StepTimeoutError(
            f"session {session_id!r}, step {step!r}: the step did not succeed within its "
            f"deadline of {policy.deadline} s ({made} attempts); nothing was recorded.",
            session_id=session_id,
            step=step,
        )

    return await attempts(
        call,
        policy.retry,
        timeout=policy.timeout,
        timed_out=timed_out,
        deadline=policy.deadline,
        expired=expired,
    )


_NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class JournaledFailure:
    """What the journal keeps of a step that failed for good (``journal_failures=True``)."""

    type_name: str
    message: str
    exception: bytes | None  # the pickled exception, when it pickles

    @classmethod
    def of(cls, exc: BaseException) -> JournaledFailure:
        t = type(exc)
        data: bytes | None
        try:
            data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # it must also come back
        except Exception:
            data = None
        return cls(f"{t.__module__}.{t.__qualname__}", str(exc), data)

    def rebuild(self, session_id: str | None, step: str) -> BaseException:
        """The exception to raise on replay: the original type when it can be rebuilt."""
        if self.exception is not None:
            try:
                exc = pickle.loads(self.exception)
                if isinstance(exc, BaseException):
                    return exc
            except Exception:
                pass
        return StepFailedError(
            f"session {session_id!r}, step {step!r}: the step failed for good in an earlier run "
            f"with {self.type_name}: {self.message} (its failure was journaled; the exception "
            "could not be rebuilt here).",
            session_id=session_id,
            step=step,
            type_name=self.type_name,
            original_message=self.message,
        )

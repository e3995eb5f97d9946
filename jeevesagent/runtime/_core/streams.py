"""Calling step functions and stream-step producers: :func:`call_step_fn` (sync or async),
:func:`open_producer` (whatever a stream step's ``fn`` returns, as an async iterator) and
:class:`StreamStep`, the async iterator ``stream_step`` returns -- replay of recorded chunks, the
producer's retries and pull timeouts under the step policy, and recording when it is exhausted.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio

from .._policy import StepPolicy, StepTimeoutError

__all__ = ["StreamStep", "call_step_fn", "close_producer", "open_producer"]


async def call_step_fn(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a step function, sync or async; a returned awaitable is awaited."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def open_producer(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[Any]:
    """Turn what a stream step's ``fn`` returns into an async iterator."""
    produced = fn(*args, **kwargs)
    if inspect.isawaitable(produced) and not hasattr(produced, "__aiter__"):
        produced = await produced
    if hasattr(produced, "__aiter__"):
        return produced.__aiter__()  # type: ignore[no-any-return]
    if hasattr(produced, "__iter__"):
        return _SyncIterator(iter(produced))
    raise TypeError(
        f"stream_step expects fn to return an async iterable (an async generator), "
        f"got {type(produced).__qualname__}"
    )


class _SyncIterator:
    __slots__ = ("_it",)

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it

    def __aiter__(self) -> _SyncIterator:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class StreamStep:
    """The async iterator ``stream_step`` returns.

    A plain class rather than an async generator: it holds no frame of its own that could be left
    suspended, and no cancel scope can ever span a ``yield``. ``start`` decides, on the first pull,
    whether to replay recorded chunks or run the producer; ``complete`` records the chunk list,
    and runs only when the producer is exhausted. ``aclose()`` (used by ``contextlib.aclosing``)
    closes the producer at once; a consumer that simply drops the iterator leaves the producer to
    the event loop's async-generator finalizer, which closes it too.
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_delivered",
        "_done",
        "_policy",
        "_producer",
        "_reopen",
        "_replay",
        "_start",
        "_where",
    )

    def __init__(
        self,
        start: Callable[[], Awaitable[tuple[list[Any] | None, AsyncIterator[Any] | None]]],
        complete: Callable[[list[Any]], Awaitable[None]] | None,
        policy: StepPolicy | None = None,
        reopen: Callable[[], Awaitable[AsyncIterator[Any]]] | None = None,
        where: tuple[str | None, str] = (None, "?"),
    ) -> None:
        self._start: Callable[[], Awaitable[Any]] | None = start
        self._complete = complete
        self._policy = policy
        self._reopen = reopen
        self._where = where  # (session id, step name) for error messages
        self._delivered = 0
        self._replay: Iterator[Any] | None = None
        self._producer: AsyncIterator[Any] | None = None
        self._chunks: list[Any] = []
        self._done = False

    def __aiter__(self) -> StreamStep:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if self._start is not None:
            start, self._start = self._start, None
            attempt = 1
            while True:
                try:
                    recorded, self._producer = await start()
                    break
                except Exception as exc:
                    # Failing to open the producer is a failure before the first chunk: the
                    # retry policy applies.
                    retry = self._policy.retry if self._policy is not None else None
                    if retry is None or attempt >= retry.attempts or not retry.retries(exc):
                        self._done = True
                        raise
                    await anyio.sleep(retry.delay(attempt))
                    attempt += 1
                except BaseException:
                    self._done = True
                    raise
            if recorded is not None:
                self._replay = iter(recorded)
        if self._replay is not None:
            try:
                return next(self._replay)
            except StopIteration:
                self._done = True
                raise StopAsyncIteration from None
        assert self._producer is not None
        try:
            chunk = await self._pull()
        except StopAsyncIteration:
            self._done = True
            await close_producer(self._producer)
            if self._complete is not None:
                await self._complete(self._chunks)
            raise
        except BaseException:
            self._done = True
            await close_producer(self._producer)
            raise
        if self._complete is not None:
            self._chunks.append(chunk)
        self._delivered += 1
        return chunk

    async def _pull(self) -> Any:
        """The next chunk from the producer, under the step policy: the timeout bounds each pull
        (never a span across a ``yield``); a failure before the first chunk reached the consumer
        may be retried with a new producer, a failure after it may not (the consumer has already
        acted on chunks that a new producer might not repeat)."""
        policy = self._policy
        if policy is None or (policy.timeout is None and policy.retry is None):
            assert self._producer is not None
            return await self._producer.__anext__()
        attempt = 1
        while True:
            assert self._producer is not None
            try:
                if policy.timeout is None:
                    return await self._producer.__anext__()
                with anyio.move_on_after(policy.timeout):
                    return await self._producer.__anext__()
                session_id, name = self._where
                raise StepTimeoutError(
                    f"session {session_id!r}, stream step {name!r}: waiting for chunk "
                    f"{self._delivered + 1} took longer than its timeout of {policy.timeout} s; "
                    "nothing was recorded.",
                    session_id=session_id,
                    step=name,
                )
            except StopAsyncIteration:
                raise
            except Exception as exc:
                retry = policy.retry
                if (
                    self._delivered
                    or self._reopen is None
                    or retry is None
                    or attempt >= retry.attempts
                    or not retry.retries(exc)
                ):
                    raise
                with contextlib.suppress(Exception):
                    await close_producer(self._producer)
                await anyio.sleep(retry.delay(attempt))
                attempt += 1
                self._producer = await self._reopen()

    async def aclose(self) -> None:
        """Stop early: close the producer; nothing is recorded."""
        if not self._done:
            self._done = True
            self._start = None
            if self._producer is not None:
                await close_producer(self._producer)


async def close_producer(producer: Any) -> None:
    aclose = getattr(producer, "aclose", None)
    if aclose is not None:
        await aclose()

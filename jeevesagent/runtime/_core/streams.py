"""Calling step functions and stream-step producers: :func:`call_step_fn` (sync or async),
:func:`open_producer` (whatever a stream step's ``fn`` returns, as an async iterator) and
:class:`StreamStep`, the async iterator ``stream_step`` returns -- replay of recorded chunks, the
producer's retries and pull timeouts (in the one attempts loop of ``_policy``), recording when
it is exhausted, and what it tells its observability hook.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._policy import StepPolicy, StepTimeoutError, attempts

if TYPE_CHECKING:
    from .hooks import StreamHook

__all__ = [
    "ChunkJournal",
    "StreamPrefix",
    "StreamStep",
    "call_step_fn",
    "close_producer",
    "current_stream_prefix",
    "open_producer",
]

T_co = TypeVar("T_co", covariant=True)


class StreamPrefix:
    """The chunks a stream step recorded before its session crashed, while its producer runs
    again: what :func:`current_stream_prefix` returns, and whether the producer asked."""

    __slots__ = ("asked", "chunks")

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.asked = False


#: Set while a resumed stream step's producer is opened and pulled (never otherwise).
_PREFIX: ContextVar[StreamPrefix | None] = ContextVar("jeevesagent_stream_prefix", default=None)


def current_stream_prefix() -> list[Any]:
    """The chunks that the running stream step delivered and journaled before its session was
    interrupted (a crash, a lost worker), when it runs again; ``[]`` on a first run, outside a
    stream step's producer, and outside any session.

    Call it from the producer (the ``fn`` of ``stream_step``), before its first chunk, to go on
    from where the interrupted run stopped -- for an LLM reply, ask the model to continue the
    text recorded so far. The consumer has already received these chunks: everything the
    producer yields after asking comes after them. A producer that does not ask is taken to start
    over and produce the same chunks again: its first ``len(prefix)`` chunks are dropped (a
    warning is logged if they differ from the recorded ones), so the consumer sees the prefix once
    and then the rest.
    """
    prefix = _PREFIX.get()
    if prefix is None:
        return []
    prefix.asked = True
    return list(prefix.chunks)


@contextlib.contextmanager
def producing(prefix: StreamPrefix | None) -> Iterator[None]:
    """Make ``prefix`` what :func:`current_stream_prefix` returns inside this block."""
    if prefix is None:
        yield
        return
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


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
    if not hasattr(produced, "__aiter__") and inspect.isawaitable(produced):
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


class ChunkJournal:
    """A producer wrapper that journals the chunks as they come (``LiveProducer`` of
    ``_journaled/livestream.py``). It is an async iterator, but ``StreamStep`` with no policy to
    apply to its pulls pulls the wrapped producer (:meth:`source`) itself, inline: a coroutine
    or a method call between the consumer and the producer would cost more than the pull.

    Around such a pull ``StreamStep`` calls :meth:`begin_pull` only while :attr:`check` is set,
    keeps :attr:`pulling` set during the pull, appends the chunk to :attr:`chunks` (also its own
    list of the stream's chunks) and awaits :meth:`flush` once ``len(chunks)`` reaches
    :attr:`flush_at` or ``time.monotonic()`` reaches :attr:`due`.
    """

    __slots__ = ("check", "chunks", "due", "flush_at", "pulling")

    def __init__(self) -> None:
        self.chunks: list[Any] = []  # the chunks pulled by this run (journaled or not yet)
        self.check = True  # begin_pull() has something to do before the next pull
        self.pulling = False  # a pull of the producer is under way
        self.flush_at = 1  # journal the waiting chunks once len(chunks) reaches this
        self.due = 0.0  # ... or once time.monotonic() reaches this

    def __aiter__(self) -> ChunkJournal:
        return self

    async def __anext__(self) -> Any:
        raise NotImplementedError

    def source(self) -> AsyncIterator[Any] | None:
        """The producer to pull directly, as above; ``None``: pull this object as an async
        iterator."""
        raise NotImplementedError

    def begin_pull(self) -> None:
        """A pull of the producer starts and :attr:`check` is set (raises the error of a
        background write; starts the flush of a stalled pull)."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Journal the chunks that wait."""
        raise NotImplementedError


class StreamStep(Generic[T_co]):
    """The async iterator ``stream_step`` returns; ``StreamStep[T]`` yields the ``T`` chunks of
    its producer (only a type-checker parameter: nothing is checked at run time).

    A plain class rather than an async generator: it holds no frame of its own that could be left
    suspended, and no cancel scope can ever span a ``yield``. ``start`` decides, on the first pull,
    whether to replay recorded chunks or run the producer; ``complete`` records the chunk list,
    and runs only when the producer is exhausted. ``aclose()`` (used by ``contextlib.aclosing``)
    closes the producer at once; a consumer that simply drops the iterator leaves the producer to
    the event loop's async-generator finalizer, which closes it too. ``hook``, if given, is told
    what happens (see :class:`~.hooks.StreamHook`).
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_delivered",
        "_direct",
        "_done",
        "_hook",
        "_live",
        "_policy",
        "_producer",
        "_reopen",
        "_replay",
        "_source",
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
        hook: StreamHook | None = None,
    ) -> None:
        self._start: Callable[[], Awaitable[Any]] | None = start
        self._complete = complete
        self._policy = policy
        # No timeout, no retry: each pull is the producer's, inline (see _pull for the others).
        self._direct = policy is None or (policy.timeout is None and policy.retry is None)
        self._reopen = reopen
        self._where = where  # (session id, step name) for error messages
        self._hook = hook
        self._delivered = 0  # counted where a policy reads it (not with _live)
        self._replay: Iterator[T_co] | None = None
        self._producer: AsyncIterator[Any] | None = None
        self._source: AsyncIterator[Any] | None = None  # what a direct pull pulls
        # Around a direct pull, when _source is its producer; None again once done.
        self._live: ChunkJournal | None = None
        self._chunks: list[Any] = []
        self._done = False

    def __aiter__(self) -> StreamStep[T_co]:
        return self

    async def __anext__(self) -> T_co:
        live = self._live
        if live is not None and self._hook is None:
            # The common case, kept short: a journaled producer pulled inline, nothing to report.
            chunks = live.chunks
            try:
                if live.check:
                    live.begin_pull()
                live.pulling = True
                try:
                    chunk: T_co = await anext(self._source)  # type: ignore[arg-type]
                finally:
                    live.pulling = False
                chunks.append(chunk)
                if len(chunks) >= live.flush_at or monotonic() >= live.due:
                    await live.flush()
            except BaseException as exc:
                await self._ended(exc)
                raise
            return chunk
        if self._done:
            raise StopAsyncIteration
        hook, token = self._hook, None
        if hook is not None:
            if self._start is not None:
                hook.started()
            token = hook.pull_started()
        try:
            if self._start is not None:
                await self._open()
            if self._replay is not None:
                try:
                    return next(self._replay)
                except StopIteration:
                    self._done = True
                    raise StopAsyncIteration from None
            try:
                source = self._source
                if source is None:
                    chunk = await self._pull()
                elif (live := self._live) is None:
                    chunk = await anext(source)
                else:
                    chunks = live.chunks
                    if live.check:
                        live.begin_pull()
                    live.pulling = True
                    try:
                        chunk = await anext(source)
                    finally:
                        live.pulling = False
                    chunks.append(chunk)
                    if len(chunks) >= live.flush_at or monotonic() >= live.due:
                        await live.flush()
                    return chunk
            except BaseException as exc:
                await self._ended(exc)
                raise
            if self._complete is not None:
                self._chunks.append(chunk)
            self._delivered += 1
            return chunk
        except StopAsyncIteration:
            if hook is not None:
                hook.ended(None)
            raise
        except BaseException as exc:
            if hook is not None:
                hook.ended(exc)
            raise
        finally:
            if hook is not None:
                hook.pull_ended(token)

    async def _ended(self, exc: BaseException) -> None:
        """The pull raised ``exc``: the producer is done (exhausted: record the chunks, if
        ``complete`` was given) or failed; close it."""
        self._done = True
        self._live = None
        await close_producer(self._producer)
        if self._complete is not None and isinstance(exc, StopAsyncIteration):
            await self._complete(self._chunks)

    async def _open(self) -> None:
        """Replay, or open the producer: a failure to open it is a failure before the first
        chunk, retried under the step policy (no timeout: that bounds pulls)."""
        start, self._start = self._start, None
        assert start is not None
        retry = self._policy.retry if self._policy is not None else None
        try:
            if retry is None:
                recorded, self._producer = await start()
            else:
                recorded, self._producer = await attempts(start, retry)
        except BaseException:
            self._done = True
            raise
        producer = self._producer
        if self._direct and producer is not None:
            if isinstance(producer, ChunkJournal):
                self._source = producer.source()
                if self._source is not None:
                    self._live = producer
                    self._chunks = producer.chunks  # one list: the journal's and the record's
            else:
                self._source = producer
        if recorded is not None:
            self._replay = iter(recorded)
            if self._hook is not None:
                self._hook.replaying()

    async def _pull(self) -> Any:
        """The next chunk from the producer, under the step policy: the timeout bounds each pull
        (never a span across a ``yield``); a failure before the first chunk reached the consumer
        may be retried with a new producer, a failure after it may not (the consumer has already
        acted on chunks that a new producer might not repeat)."""
        policy = self._policy
        if policy is None or (policy.timeout is None and (policy.retry is None or self._delivered)):
            assert self._producer is not None
            return await anext(self._producer)
        return await attempts(
            self._pull_once,
            policy.retry,
            timeout=policy.timeout,
            timed_out=self._timed_out,
            may_retry=self._may_retry,
            before_retry=self._drop_producer,
        )

    async def _pull_once(self) -> Any:
        if self._producer is None:  # the one that failed was dropped: retry with a new one
            assert self._reopen is not None
            self._producer = await self._reopen()
        return await anext(self._producer)

    def _may_retry(self, exc: BaseException) -> bool:
        return (
            not self._delivered
            and self._reopen is not None
            and not isinstance(exc, StopAsyncIteration)
        )

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            await close_producer(producer)

    def _timed_out(self, attempt: int) -> StepTimeoutError:
        assert self._policy is not None
        session_id, name = self._where
        return StepTimeoutError(
            f"session {session_id!r}, stream step {name!r}: waiting for chunk "
            f"{self._delivered + 1} took longer than its timeout of {self._policy.timeout} s; "
            "nothing was recorded.",
            session_id=session_id,
            step=name,
        )

    async def aclose(self) -> None:
        """Stop early: close the producer; nothing is recorded."""
        try:
            if not self._done:
                self._done = True
                self._start = None
                self._live = None
                if self._producer is not None:
                    await close_producer(self._producer)
        finally:
            if self._hook is not None:
                self._hook.ended(None, closed=True)


async def close_producer(producer: Any) -> None:
    aclose = getattr(producer, "aclose", None)
    if aclose is not None:
        await aclose()

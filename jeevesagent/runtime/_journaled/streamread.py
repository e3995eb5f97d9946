"""Reading a session's stream from any process: :class:`StreamReader`, the async iterator
``rt.read_stream(session_id, name, offset=)`` returns, and :class:`StreamWatch`, the one wake
callback per runtime through which a store that pushes notices (Postgres: ``LISTEN
jrt_stream``) wakes its readers. Other stores are polled.

A reader follows the latest stream step of that name in the session (the one whose first row
was journaled last when the reader first finds one): the chunk batches its producer journals
while it runs (``c:`` rows), then its complete row (the ``s:`` row ``stream_step`` records when
the producer is exhausted), which ends the reader. A session that ends (completed, failed,
cancelled) without completing it makes the reader raise :class:`StreamFailedError`; one that is
interrupted or crashed may resume, so the reader waits for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from .._core.keys import (
    CHUNKS,
    chunks_prefix,
    split_chunks_key,
    split_step_key,
    step_journal_key,
)
from .._core.values import JournalCodec, decode_value
from .._errors import StreamFailedError
from .._journal.backend import ENDED_STATUSES, STREAM, JournalBackend, Row

__all__ = ["StreamReader", "StreamWatch"]

# With notices pushed, a reader still looks every this many seconds (a notice lost while the
# LISTEN connection was being reopened delays it by no more than that).
_PUSHED_FALLBACK = 2.0


class StreamWatch:
    """The wake callback a runtime registers once with its store for all its stream readers."""

    def __init__(self, backend: JournalBackend) -> None:
        self._backend = backend
        self._events: dict[str, set[anyio.Event]] = {}

    def wake(self, session_id: str) -> None:
        for event in self._events.get(session_id, ()):
            event.set()

    async def pushing(self) -> bool:
        """Register with the store; whether it pushes notices of stream rows (and of sessions
        ending) now."""
        if not await self._backend.watch_streams(self.wake):
            return False
        return await self._backend.watch(self.wake)

    def add(self, session_id: str, event: anyio.Event) -> None:
        self._events.setdefault(session_id, set()).add(event)

    def discard(self, session_id: str, event: anyio.Event) -> None:
        events = self._events.get(session_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[session_id]


class StreamReader:
    """The chunks of one session's stream step from ``offset`` on; see
    :meth:`JournaledRuntime.read_stream`."""

    def __init__(
        self,
        backend: JournalBackend,
        watch: StreamWatch,
        session_id: str,
        name: str,
        offset: int,
        poll_interval: float,
        decode: Callable[[str, Row], Any] | None = None,
    ) -> None:
        self._backend = backend
        self._decoder = decode  # (key, row) -> value; default: the store's codec
        self._codec: JournalCodec = backend.codec
        self._watch = watch
        self._session_id = session_id
        self._name = name
        self._offset = offset  # the stream offset of the next chunk to yield
        self._poll = poll_interval
        self._key: str | None = None  # the stream step followed, once found
        self._lengths: dict[int, int] = {}  # chunk count of each batch decoded (by its offset)
        self._queue: deque[Any] = deque()
        self._done = False

    def __repr__(self) -> str:
        return (
            f"<StreamReader session={self._session_id!r} name={self._name!r} "
            f"offset={self._offset} done={self._done}>"
        )

    @property
    def offset(self) -> int:
        """The offset of the next chunk: the one to reconnect with after this reader stops."""
        return self._offset

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> Any:
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            await self._next_rows()
        self._offset += 1
        return self._queue.popleft()

    async def aclose(self) -> None:
        self._done = True
        self._queue.clear()

    async def _next_rows(self) -> None:
        """Read what is new; if nothing is, wait for a notice or the next poll."""
        sid = self._session_id
        event = anyio.Event()
        self._watch.add(sid, event)  # before reading: a notice in between is not lost
        try:
            pushing = await self._watch.pushing()
            if await self._read():
                return
            info = await self._backend.session_info(sid)
            if info is not None and info.status in ENDED_STATUSES:
                if await self._read():  # completed just before it ended
                    return
                what = (
                    f"without completing stream step {self._name!r} (chunks read: {self._offset})"
                    if self._key is not None
                    else f"without running a stream step named {self._name!r}"
                )
                raise StreamFailedError(
                    f"session {sid!r} ended {info.status} {what}; the stream will get no more "
                    "chunks.",
                    session_id=sid,
                    step=self._name,
                )
            with anyio.move_on_after(_PUSHED_FALLBACK if pushing else self._poll):
                await event.wait()
        finally:
            self._watch.discard(sid, event)

    async def _read(self) -> bool:
        """Queue the chunks journaled from the current offset on; whether there were any (or
        the stream is complete)."""
        if self._key is None:
            self._key = await self._latest()
            if self._key is None:
                return False
        sid, key = self._session_id, self._key
        complete = await self._backend.load_row(sid, STREAM, key)
        if complete is not None:
            chunks: list[Any] = self._decode(key, complete)
            self._queue.extend(chunks[self._offset :])
            self._done = True
            return True
        batches = await self._backend.read_prefixed(sid, STREAM, chunks_prefix(key))
        by_offset: dict[int, tuple[str, Row]] = {}
        for batch_key, row in batches.items():
            split = split_chunks_key(batch_key)
            if split is not None and split[0] == key:
                by_offset[split[1]] = (batch_key, row)
        start = self._offset
        for first in sorted(by_offset):
            known = self._lengths.get(first)
            if known is not None and first + known <= start:
                continue
            batch_key, row = by_offset[first]
            batch: list[Any] = self._decode(batch_key, row)
            self._lengths[first] = len(batch)
            if first <= start < first + len(batch):
                self._queue.extend(batch[start - first :])
                start = first + len(batch)
        return bool(self._queue)

    async def _latest(self) -> str | None:
        """The key of the session's latest stream step named ``name``, or ``None`` yet."""
        sid, name = self._session_id, self._name
        own = step_journal_key(name, "")  # "s:<name>:" -- also the start of longer names
        started: dict[str, float] = {}
        complete = await self._backend.read_prefixed(sid, STREAM, own)
        batches = await self._backend.read_prefixed(sid, STREAM, f"{CHUNKS}{own}")
        for key, row in complete.items():
            step = split_step_key(key)
            if step is not None and step[0] == name:
                started[key] = min(started.get(key, row.created_at), row.created_at)
        for key, row in batches.items():
            split = split_chunks_key(key)
            step = None if split is None else split_step_key(split[0])
            if split is not None and step is not None and step[0] == name:
                stream = split[0]
                started[stream] = min(started.get(stream, row.created_at), row.created_at)
        if not started:
            return None
        return max(started, key=lambda k: (started[k], k))

    def _decode(self, key: str, row: Row) -> Any:
        if self._decoder is not None:
            return self._decoder(key, row)
        return decode_value(
            self._codec, row.data, session_id=self._session_id, step=key, kind=STREAM
        )

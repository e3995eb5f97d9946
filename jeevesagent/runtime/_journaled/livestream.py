"""Journaling a stream step's chunks as they come: :class:`LiveProducer` wraps the producer of a
stream step that is not recorded as complete. It delivers the prefix an interrupted run
journaled, then the producer's chunks, and journals them in batches (``c:`` keys) -- when
``flush_interval`` seconds have passed since the last batch, or ``flush_chunks`` chunks are
waiting -- never one write per chunk. A chunk is journaled by the pull of a later chunk, or, if
the producer stalls, by a background task of the session, started when the session's alarm (see
``alarm.py``) finds the pull still stalled once the batch is due -- so a reader never waits much
longer than ``flush_interval`` for a delivered chunk, and a stream that never stalls starts no
task.

The complete stream is still recorded by ``stream_step`` as one row under the step's own key
when the producer is exhausted; the batches are only ever read as the prefix of a stream that
did not complete, and by ``read_stream``.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._core.keys import chunks_journal_key, chunks_prefix, split_chunks_key
from .._core.streams import ChunkJournal, StreamPrefix, close_producer, producing
from .._journal.backend import STREAM
from .recorder import Recorder
from .state import JournaledState

__all__ = ["LiveProducer", "recorded_prefix"]

_log = logging.getLogger("jeevesagent.runtime")


def recorded_prefix(recorder: Recorder, state: JournaledState, stream_key: str) -> list[Any]:
    """The chunks journaled in batches for ``stream_key`` by earlier runs, in order: the
    batches that follow each other from chunk 0 (a gap ends the prefix)."""
    if chunks_journal_key(stream_key, 0) not in state.streams:
        return []  # no batch from chunk 0 (the common case: a first run), without a scan
    start = chunks_prefix(stream_key)
    batches: dict[int, str] = {}
    for key in state.streams:
        if key.startswith(start):
            split = split_chunks_key(key)
            if split is not None and split[0] == stream_key:
                batches[split[1]] = key
    chunks: list[Any] = []
    while len(chunks) in batches:
        key = batches[len(chunks)]
        batch = recorder.decode(state, key, state.streams[key], STREAM)
        if not batch:
            break
        chunks.extend(batch)
    return chunks


class LiveProducer(ChunkJournal):
    """The producer of a stream step, as ``StreamStep`` pulls it: the recorded prefix first,
    then the producer's own chunks (its first ``len(prefix)`` dropped unless it asked for the
    prefix with ``current_stream_prefix()``), each new one journaled in batches. Without a
    prefix, ``StreamStep`` pulls the producer itself, inline (see :class:`ChunkJournal`: no
    coroutine or call of this class per chunk, unless :attr:`check` asks for one)."""

    __slots__ = (
        "__weakref__",
        "_base",
        "_closed",
        "_dropped",
        "_error",
        "_flush_chunks",
        "_flush_interval",
        "_flushed",
        "_key",
        "_prefix",
        "_producer",
        "_recorder",
        "_replayed",
        "_state",
        "_timer",
        "_warned",
    )

    def __init__(
        self,
        producer: AsyncIterator[Any],
        recorder: Recorder,
        state: JournaledState,
        stream_key: str,
        prefix: StreamPrefix | None,
        flush_interval: float,
        flush_chunks: int,
    ) -> None:
        super().__init__()
        self._producer = producer
        self._recorder = recorder
        self._state = state
        self._key = stream_key
        self._prefix = prefix
        self._replayed = 0  # prefix chunks delivered
        self._dropped = 0  # producer chunks dropped (it did not ask for the prefix)
        self._warned = False
        self._flush_interval = flush_interval
        self._flush_chunks = flush_chunks
        # self.chunks: the new chunks (not the prefix); the first _flushed of them are journaled
        self._flushed = 0
        self._base = 0 if prefix is None else len(prefix.chunks)  # chunk offset of chunks[0]
        self.flush_at = flush_chunks
        self.due = time.monotonic() + flush_interval
        self._timer = False  # the background flush of a stalled stream is running
        self._error: Exception | None = None  # a background flush failed: raised at next pull
        self._closed = False

    def __aiter__(self) -> LiveProducer:
        return self

    async def __anext__(self) -> Any:
        """The next chunk, when ``StreamStep`` does not pull the producer itself (a prefix to
        deliver first, or a step policy around each pull)."""
        prefix = self._prefix
        if self.check:
            self.begin_pull()
        if prefix is None:
            chunk = await self._pull()
        else:
            if self._replayed < len(prefix.chunks):
                self._replayed += 1
                return prefix.chunks[self._replayed - 1]
            while True:
                with producing(prefix):
                    chunk = await self._pull()
                if prefix.asked or self._dropped >= len(prefix.chunks):
                    break
                self._check_dropped(chunk)
        chunks = self.chunks
        chunks.append(chunk)
        if len(chunks) >= self.flush_at or time.monotonic() >= self.due:
            await self.flush()
        return chunk

    async def _pull(self) -> Any:
        self.pulling = True
        try:
            return await anext(self._producer)
        finally:
            self.pulling = False

    def source(self) -> AsyncIterator[Any] | None:
        return self._producer if self._prefix is None else None

    def begin_pull(self) -> None:
        """Raise the error of a background flush; while the producer's next chunk comes, chunks
        waiting are journaled once the flush interval has passed (see :func:`_flush_stalled`):
        arrange that, once chunks wait. Asked for again (``check``) when it ends.

        The session's alarm (served by its claim heartbeat) looks at the stream when the flush
        is due, and starts the background flush only if the pull is still under way then: a
        stream whose producer does not stall costs no task. Without an alarm to ask, the flush
        task starts now, and sleeps until it is due."""
        if self._error is not None:
            raise self._error
        if len(self.chunks) > self._flushed and not self._timer:
            self._timer = True
            self.check = False
            ref = weakref.ref(self)
            when = anyio.current_time() + max(0.0, self.due - time.monotonic())
            if not self._state.alarm.call_at(when, functools.partial(_look_at, ref)):
                _start_flush(ref)

    def _check_dropped(self, chunk: Any) -> None:
        assert self._prefix is not None
        recorded = self._prefix.chunks[self._dropped]
        self._dropped += 1
        if not self._warned and chunk != recorded:
            self._warned = True
            _log.warning(
                "session %r, stream step %r: resumed after an interruption, the producer did not "
                "ask for the %d recorded chunks (current_stream_prefix()) and its chunk %d "
                "differs from the recorded one; the consumer got the recorded prefix, then the "
                "producer's chunks after it.",
                self._state.id,
                self._key,
                len(self._prefix.chunks),
                self._dropped - 1,
            )

    async def flush(self) -> None:
        chunks = self.chunks
        batch = chunks[self._flushed :]
        key = chunks_journal_key(self._key, self._base + self._flushed)
        self._flushed = len(chunks)
        # Counted from when the batch is taken: a pull during its write must not write another.
        self.flush_at = self._flushed + self._flush_chunks
        self.due = time.monotonic() + self._flush_interval
        data = self._recorder.encode(self._state, key, batch, STREAM, "stream chunks")
        await self._recorder.record_chunks(self._state, key, data)

    def _waiting(self) -> bool:
        return len(self.chunks) > self._flushed

    async def aclose(self) -> None:
        self._closed = True
        if self._prefix is None:
            await close_producer(self._producer)
            return
        with producing(self._prefix):
            await close_producer(self._producer)


def _start_flush(ref: weakref.ref[LiveProducer]) -> None:
    live = ref()
    if live is not None:
        flush = functools.partial(_flush_stalled, ref)
        live._state.keep_running(f"stream flush {id(live)}", flush)


def _look_at(ref: weakref.ref[LiveProducer]) -> None:
    """The session's alarm, when a stream's flush is due (or its alarm stops): start the
    background flush if the pull is under way with chunks waiting; else the next pull asks the
    alarm again."""
    live = ref()
    if live is None or live._closed:
        return
    if live._waiting() and live.pulling:
        _start_flush(ref)
    else:
        live._timer = False
        live.check = True


async def _flush_stalled(ref: weakref.ref[LiveProducer]) -> None:
    """A session service while the consumer waits for the producer's next chunk and chunks
    wait to be journaled: journal them once the flush interval has passed since the last batch
    (a stalled producer). Ends when the pull does: a consumer busy with a chunk, or one that
    stopped early, has nothing journaled behind its back. Holds the stream only weakly, so a
    stream its consumer dropped is still collected (and its producer closed) at once."""
    live = ref()
    try:
        while live is not None and live._waiting() and live.pulling and not live._closed:
            delay = max(0.0, live.due - time.monotonic())
            live = None  # not held across the sleep
            await anyio.sleep(delay)
            live = ref()
            if live is None:
                return
            if live._waiting() and live.pulling and time.monotonic() >= live.due:
                try:
                    await live.flush()
                except Exception as exc:  # not lost: the next pull raises it
                    live._error = exc
                    return
    finally:
        live = ref()
        if live is not None:
            live._timer = False
            live.check = True  # the next pull starts it again (or raises its error)

"""The dashboard's server-sent events: the sessions list and a session's page, sent again
whenever they change, and a stream step's chunks as they are journaled.

Pages are recomputed every ``poll`` seconds and sent only when they changed (a comment line
keeps an idle connection open through proxies). A stream is read with the runtime's
:class:`~.._journaled.streamread.StreamReader` (woken by the store's notices where it pushes
them, as ``read_stream`` is); each chunk's event id is the offset after it, so a browser that
reconnects (``Last-Event-ID``) gets exactly the rest. Chunks are read by the ``tail`` command's
rules: a pickle that is neither signed nor plain data is not read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio

from .._cli.outcome import read_row
from .._cli.target import CliError
from .._errors import StreamFailedError
from .._journal.backend import STREAM, JournalBackend, Row
from .._journaled.streamread import StreamReader, StreamWatch

__all__ = ["KEEPALIVE", "changes", "event", "stream_events"]

KEEPALIVE = 15.0  # seconds between comment lines on an idle connection


class _Unreadable(Exception):
    pass


def event(data: Any, name: str | None = None, event_id: str | None = None) -> str:
    """One server-sent event: ``data`` as JSON on one line."""
    head = f"event: {name}\n" if name else ""
    if event_id is not None:
        head += f"id: {event_id}\n"
    return f"{head}data: {json.dumps(data, ensure_ascii=False, default=repr)}\n\n"


async def changes(
    load: Callable[[], Awaitable[dict[str, Any]]], poll: float
) -> AsyncGenerator[str, None]:
    """``load()`` as an event each time its result changes (its ``now`` left out)."""
    last = None
    quiet = 0.0
    while True:
        try:
            page = await load()
        except CliError as exc:  # the session is gone (pruned): say so, and stop
            yield event({"error": exc.message}, "gone")
            return
        text = json.dumps({k: v for k, v in page.items() if k != "now"}, default=repr)
        if text != last:
            last, quiet = text, 0.0
            yield event(page)
        elif quiet >= KEEPALIVE:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await anyio.sleep(poll)
        quiet += poll


def _chunk_text(chunk: Any) -> str:
    if isinstance(chunk, bytes):
        return chunk.decode(errors="replace")
    return chunk if isinstance(chunk, str) else repr(chunk)


async def stream_events(
    store: JournalBackend,
    watch: StreamWatch,
    session_id: str,
    name: str,
    offset: int,
    poll: float,
) -> AsyncGenerator[str, None]:
    """The chunks of stream step ``name`` from ``offset`` on, then an ``end`` event (or
    ``failed``: the session ended without completing it, or a chunk cannot be read)."""

    def decode(key: str, row: Row) -> Any:
        read = read_row(store.codec, session_id, STREAM, key, row, trust=False, allowed=frozenset())
        if not read.ok:
            raise _Unreadable(f"a chunk of stream {name!r} cannot be shown: {read.note}")
        return read.value

    reader = StreamReader(store, watch, session_id, name, offset, poll, decode)
    try:
        async for chunk in reader:
            at = reader.offset
            yield event({"offset": at - 1, "text": _chunk_text(chunk)}, "chunk", str(at))
    except StreamFailedError as exc:
        yield event({"error": str(exc), "offset": reader.offset}, "failed")
        return
    except _Unreadable as exc:
        yield event({"error": str(exc), "offset": reader.offset}, "failed")
        return
    yield event({"offset": reader.offset}, "end")

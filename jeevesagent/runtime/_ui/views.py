"""What the dashboard's pages show, as JSON-able dicts: the sessions list (with counts by status
and what each session waits for) and one session's page (its rows in journal order with safe
previews and the time each took, counts by kind, its stream steps, its outcome).

Every value is read through the command line's functions (:func:`~.._cli.commands.load_view`,
:func:`~.._cli.outcome.read_outcome`), so by the same rules: JSON decoded; a pickle decoded only
when its signature verifies with the configured key, otherwise described by its opcodes, never
executed (the dashboard has no ``--trust``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .._cli.commands import load_view, preview_text, session_waiting
from .._cli.outcome import Read, describe_waiting, read_outcome
from .._cli.shared import when
from .._core.keys import split_chunks_key, split_step_key
from .._journal.backend import ENDED_STATUSES, SESSION_STATUSES, JournalBackend

__all__ = ["PREVIEW_MAX", "session_page", "sessions_page"]

PREVIEW_MAX = 2000  # characters of a value shown on a page (the CLI's `show --values` has all)
LIST_LIMIT = 1000  # sessions on the list page, the most recently active first


async def sessions_page(
    store: JournalBackend, status: str | None, workflows: Sequence[str] | None
) -> dict[str, Any]:
    """The list page: sessions (most recently active first), counts by status, workflow names."""
    infos = await store.list_sessions(None, workflows=list(workflows) if workflows else None)
    counts = Counter(i.status for i in infos)
    names = sorted({i.workflow for i in infos if i.workflow})
    shown = [i for i in infos if status is None or i.status == status]
    shown.sort(key=lambda i: (-i.updated_at, i.session_id))
    now = time.time()
    sessions = []
    for info in shown[:LIST_LIMIT]:
        waiting = await session_waiting(store, info, now)
        sessions.append(
            {
                "session_id": info.session_id,
                "status": info.status,
                "workflow": info.workflow,
                "owner": info.owner,
                "steps": info.steps,
                "created_at": info.created_at,
                "updated_at": info.updated_at,
                "cancel_requested": info.cancel_requested,
                "waiting_for": waiting.as_json() if waiting else None,
                "waiting_text": describe_waiting(waiting, when) if waiting else "",
            }
        )
    return {
        "sessions": sessions,
        "total": len(shown),
        "counts": {s: counts.get(s, 0) for s in SESSION_STATUSES},
        "workflows": names,
        "now": now,
    }


def _text(read: Read) -> str:
    if not read.ok:
        return f"({read.format}, not shown: {read.note})"
    if read.format == "json":
        return json.dumps(read.value, ensure_ascii=False)
    return repr(read.value)


def _stream_name(key: str) -> str | None:
    """The stream step a stream row belongs to (its complete row, or a batch of its chunks)."""
    chunks = split_chunks_key(key)
    parts = split_step_key(chunks[0] if chunks else key)
    return parts[0] if parts else None


async def session_page(store: JournalBackend, session_id: str) -> dict[str, Any]:
    """One session (``CliError`` if the journal knows nothing of it): see the module."""
    view = await load_view(store, session_id, trust=False)
    info = view.info
    start = info.created_at if info is not None else None
    rows = []
    streams: dict[str, bool] = {}  # name -> completed
    previous = start
    for obj in view.rows:
        created = float(obj["created_at"])
        stream = _stream_name(obj["key"]) if obj["kind"] == "stream" else None
        if stream is not None:
            done = not obj["key"].startswith("c:")
            streams[stream] = streams.get(stream, False) or done
        text = preview_text(obj, full=True)
        rows.append(
            {
                "kind": obj["kind"],
                "name": obj["name"],
                "key": obj["key"],
                "created_at": created,
                # the time since the row before it (or since the session began): for a step,
                # about how long it ran; for a signal or a sleep, how long the session waited
                "duration": max(0.0, created - previous) if previous is not None else 0.0,
                "size": obj["size"],
                "format": obj["format"],
                "signed": obj["signed"],
                "verified": obj["verified"],
                "shown": "value" in obj,
                "preview": text if len(text) <= PREVIEW_MAX else text[: PREVIEW_MAX - 3] + "...",
                "stream": stream,
            }
        )
        previous = created if previous is None else max(previous, created)
    outcome: dict[str, Any] | None = None
    if info is not None and info.status in ENDED_STATUSES:
        out = await read_outcome(store, info, trust=False)
        outcome = {
            "status": out.status,
            "value": _text(out.value) if out.value is not None else None,
            "failure": list(out.failure) if out.failure else None,
            "note": out.note,
        }
    waiting = view.waiting
    return {
        "session": info._asdict() if info is not None else None,
        "rows": rows,
        "counts": dict(Counter(r["kind"] for r in rows)),
        "streams": [{"name": n, "completed": c} for n, c in streams.items()],
        "pending_signals": {"count": view.pending, "names": view.pending_names},
        "waiting_for": waiting.as_json() if waiting else None,
        "waiting_text": describe_waiting(waiting, when) if waiting else "",
        "outcome": outcome,
    }

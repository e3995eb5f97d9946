"""The shape of a journal row, shared by the stores and the group committer: a :class:`Record`
on its way to a store, a :class:`Row` as a store returns it, and the two row kinds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["STEP", "STREAM", "Record", "Row"]

STEP = 0
STREAM = 1


class Record(NamedTuple):
    """One encoded journal row on its way to a store: what ``JournalBackend.append`` and
    ``write_rows`` receive.

    ``kind`` is :data:`STEP` or :data:`STREAM`; ``key`` the row's journal key in its session
    (unique per ``(session_id, kind, key)``: the first row written wins); ``data`` the value
    already encoded by the runtime's codec (and signed, on a signed journal); ``created_at``
    epoch seconds.
    """

    session_id: str
    kind: int  # STEP or STREAM
    key: str
    data: bytes
    created_at: float


class Row(NamedTuple):
    """One journal row as a store returns it: its encoded value and when it was recorded (epoch
    seconds; ``0.0`` when the store cannot know, as for a five-method store's streams)."""

    data: bytes
    created_at: float

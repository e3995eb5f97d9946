"""The shape of a journal row, shared by the stores and the group committer: a :class:`Record`
on its way to a store, a :class:`Row` as a store returns it, and the two row kinds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["STEP", "STREAM", "Record", "Row"]

STEP = 0
STREAM = 1


class Record(NamedTuple):
    """One encoded journal row on its way to a store."""

    session_id: str
    kind: int  # STEP or STREAM
    key: str
    data: bytes
    created_at: float


class Row(NamedTuple):
    data: bytes
    created_at: float

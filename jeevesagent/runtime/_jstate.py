"""What a journaled runtime holds for each open session: :class:`JournaledState` (the session's
journal in memory, its write buffer, claim and signal bookkeeping) and the public
:class:`JournaledSession` object that ``async with runtime.session(id)`` yields.
"""

from __future__ import annotations

from typing import Any

import anyio

from ._base import BaseRuntime, BaseSession, SessionState
from ._store import JournalEntry, Record, Row

__all__ = ["JournaledSession", "JournaledState"]


class JournaledSession(BaseSession):
    """A session of a :class:`JournaledRuntime`: ``.id`` and ``await deliver(name, payload)``."""

    _state: JournaledState | None = None

    def __repr__(self) -> str:
        state = self._state
        steps = pending = 0
        if state is not None:
            receipts = sum(1 for key in state.steps if key[:2] in ("g:", "o:"))
            steps = len(state.steps) - receipts
            pending = receipts - sum(state.signals_received.values())
        pending += self._runtime._mailbox.pending(self.id) if self._runtime else 0
        return f"<JournaledSession id={self.id!r} steps={steps} pending_signals={pending}>"


class JournaledState(SessionState):
    """One open session's journal, held in memory while it is open.

    ``steps``/``streams`` map journal keys to encoded rows (bundled stores, loaded in one round
    trip when the session opens, so replay never reads the database) or to decoded values (a
    third-party store, read per step).
    """

    def __init__(self, session_id: str, runtime: BaseRuntime[Any]) -> None:
        super().__init__(session_id)
        self.steps: dict[str, Row | JournalEntry] = {}
        self.streams: dict[str, Row | list[Any]] = {}
        self.inflight: dict[str, anyio.Event] = {}
        self.signals_received: dict[str, int] = {}
        self.signal_tags: set[bytes] = set()  # signatures of the signed signals received
        self.buffer: list[Record] = []  # recorded here, not yet handed to the store
        self.write_error: BaseException | None = None  # a buffered commit failed: stop
        self.claimed = False  # this runtime holds the session's claim in the store
        self.claimed_at = 0.0  # anyio.current_time() just before the claim was taken
        self.claim_error: BaseException | None = None  # the claim was lost (heartbeat)
        self.receipt_next: dict[str, int] = {}  # per signal name: index of the next receipt
        self.legacy = False  # the journal holds rows imported from jeevesagent 0.9.7 ("l:" keys)
        # Strict replay: argument fingerprints per step name, as journaled when the session
        # opened, and as called in this run.
        self.recorded_fps: dict[str, set[str]] = {}
        self.called_fps: dict[str, set[str]] = {}
        self.session = JournaledSession(session_id, runtime)
        self.session._state = self

"""What a journaled runtime holds for each open session: :class:`JournaledState` (the session's
journal in memory, its write buffer and write failure, claim, signal and strict-replay
bookkeeping) and the public :class:`JournaledSession` object that
``async with runtime.session(id)`` yields.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from .._core.base import BaseRuntime, BaseSession, SessionState
from .._core.keys import is_chunks_key, is_signal_key, is_signal_receipt, split_step_key
from .._errors import JournalMismatchError, StoreError, Suspension
from .._journal.rows import STEP, Record, Row
from .alarm import SessionAlarm

__all__ = ["JournaledSession", "JournaledState"]


class JournaledSession(BaseSession):
    """A session of a :class:`JournaledRuntime`: ``.id`` and ``await deliver(name, payload)``."""

    _state: JournaledState | None = None

    def __repr__(self) -> str:
        state = self._state
        steps = pending = 0
        if state is not None:
            receipts = sum(1 for key in state.steps if is_signal_key(key))
            steps = len(state.steps) - receipts
            pending = receipts - sum(state.signals_received.values())
        return f"<JournaledSession id={self.id!r} steps={steps} pending_signals={pending}>"


class JournaledState(SessionState):
    """One open session's journal, held in memory while it is open.

    ``steps``/``streams`` map journal keys to encoded rows, loaded in one round trip when the
    session opens, so replay never reads the database. ``loaded`` is ``False`` when the store
    cannot load a whole session (a five-method store): rows are then read per key as needed.
    """

    def __init__(self, session_id: str, runtime: BaseRuntime[Any]) -> None:
        super().__init__(session_id)
        self.steps: dict[str, Row] = {}
        self.streams: dict[str, Row] = {}
        self.loaded = False  # the whole journal is in steps/streams (see above)
        self.inflight: dict[str, anyio.Event | None] = {}  # running steps (see Steps.step)
        self.signals_received: dict[str, int] = {}
        self.signal_tags: set[bytes] = set()  # signatures of the signed signals received
        self.buffer: list[Record] = []  # recorded here, not yet handed to the store
        self.write_error: BaseException | None = None  # a buffered commit failed: stop
        self.claimed = False  # this runtime holds the session's claim in the store
        self.claimed_at = 0.0  # anyio.current_time() just before the claim was taken
        self.claim_error: BaseException | None = None  # the claim was lost (heartbeat)
        self.alarm = SessionAlarm()  # served by the heartbeat while it runs
        self.receipt_next: dict[str, int] = {}  # per signal name: index of the next receipt
        self.legacy = False  # the journal holds rows imported from jeevesagent 0.9.7 ("l:" keys)
        self.workflow: str | None = None  # the workflow the session runs (from its claim)
        self.end_status: str | None = None  # how it ends, when not told by its exception
        # A workflow's outcome (its w:result or w:failure:N record), not committed yet: it
        # commits with the session's end, in one transaction (see ClaimHolder.finish).
        self.outcome: list[Record] = []
        # Suspension (under serve): a body waiting longer than this is suspended (None: never);
        # the waits and sleeps in progress in it; why it was suspended, once it was.
        self.suspend_after: float | None = None
        self.waits = 0
        self.suspended: Suspension | None = None
        # Strict replay: argument fingerprints per step name, as journaled when the session
        # opened, and as called in this run.
        self.recorded_fps: dict[str, set[str]] = {}
        self.called_fps: dict[str, set[str]] = {}
        self.session = JournaledSession(session_id, runtime)
        self.session._state = self

    def journal_counts(self) -> tuple[int, int, int] | None:
        """(steps, streams, signal receipts) loaded when the session opened; ``None`` when the
        store cannot load a whole session (a five-method store, read per key)."""
        if not self.loaded:
            return None
        receipts = sum(1 for key in self.steps if is_signal_receipt(key))
        streams = sum(1 for key in self.streams if not is_chunks_key(key))  # not chunk batches
        return len(self.steps) - receipts, streams, receipts

    # -- suspension ------------------------------------------------------------------------------
    def may_suspend(self) -> bool:
        """A served session's body may be suspended now: it does nothing but this one wait (no
        other wait or sleep, no step running)."""
        return self.suspend_after is not None and self.waits == 1 and not self.inflight

    def suspend(self, waiting_for: str | None, wake_at: float | None) -> Suspension:
        """The exception that unwinds the body, remembered to record the session ``waiting``."""
        self.suspended = Suspension(self.id, waiting_for, wake_at)
        return self.suspended

    # -- strict replay --------------------------------------------------------------------------
    def note_recorded(self, keys: Iterable[str]) -> None:
        """Remember the argument fingerprints the journal held per step name when it opened."""
        for key in keys:
            step = split_step_key(key)
            if step is not None:
                self.recorded_fps.setdefault(step[0], set()).add(step[1])

    def called(self, name: str, fp: str) -> None:
        self.called_fps.setdefault(name, set()).add(fp)

    def check_strict(self, name: str, fp: str) -> None:
        """Strict replay: a step is called with arguments the journal does not hold for its
        name while a recorded call of that name has not been replayed yet in this run -> the
        code no longer takes the path it took. Calls of one name with new arguments after every
        recorded one has replayed (a first run, or new work past the replay) are fine."""
        recorded = self.recorded_fps.get(name)
        if not recorded or fp in recorded:
            return
        pending = recorded - self.called_fps.get(name, set())
        if pending:
            raise JournalMismatchError(
                f"session {self.id!r}, step {name!r}: the journal recorded this step with "
                f"arguments fingerprint {min(pending)}, not replayed yet in this run, but it was "
                f"called with {fp}. The code or its inputs no longer match the journal (strict "
                "replay). Make the workflow deterministic, give each distinct call its own step "
                "name, or start a new session.",
                session_id=self.id,
                step=name,
            )

    # -- writes -----------------------------------------------------------------------------------
    def ends_here(self) -> bool:
        """The context exiting now is the session's last, and the session ends with an outcome:
        its end commits the records still buffered with the outcome (one commit, not two)."""
        return bool(self.outcome) and self.refs == 1

    def write_failed(self, step: str | None) -> StoreError:
        """The error of a write after a buffered commit of this session failed."""
        where = f", step {step!r}" if step is not None else ""
        error = StoreError(
            f"session {self.id!r}{where}: an earlier buffered journal commit of this session "
            f"failed ({self.write_error}); the session cannot go on without it, and nothing "
            "after it is recorded. Open the session again to resume from what was committed.",
            session_id=self.id,
            step=step,
        )
        error.__cause__ = self.write_error
        return error

    def adopt(self, conflicts: dict[tuple[str, int, str], Row]) -> None:
        """Someone else recorded these keys first (another runtime on the same store): everyone
        sees the first record."""
        for (_, kind, key), row in conflicts.items():
            (self.steps if kind == STEP else self.streams)[key] = row

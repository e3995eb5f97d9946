"""What the CLI can tell of a workflow session without running code from the database: its
outcome (``result``: the value, or the failure's type and message) and what an open session is
waiting for (``sessions``, ``show``: a worker, or a durable sleep's wake-up time).

Values are read by :func:`~jeevesagent.runtime._core.values.peek`'s rules: JSON always; a pickle
only when its signature verifies with the key, or with ``--trust``. Two kinds of row that the
runtime writes itself -- a sleep's wake-up time (a float) and a workflow's failure (a
``JournaledFailure``: type name, message, and the exception pickled inside it, which is never
read) -- are also read from an *unsigned* pickle without ``--trust``, by an unpickler that looks
up no global but ``JournaledFailure`` (Python's "restricting globals"): no function named by the
row can be called, so no code from the database runs. A row whose signature fails is never read.

What a session waits for is what its journal says -- a sleep's wake-up time is journaled before
it sleeps; a wait for a signal journals nothing until the signal is received -- or, for a session
suspended by ``serve`` (status ``waiting``), what its sessions row records: the signal, the
wake-up time.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._core.keys import (
    describe_key,
    failure_index,
    is_timer_key,
    workflow_result_key,
)
from .._core.values import JournalCodec, peek
from .._journal.backend import (
    ENDED_STATUSES,
    STEP,
    JournalBackend,
    Row,
    SessionInfo,
    SessionJournal,
)
from .._policy import JournaledFailure

__all__ = [
    "Outcome",
    "Read",
    "Waiting",
    "describe_waiting",
    "read_outcome",
    "read_row",
    "waiting_for",
]

# How the JSON codec stores a JournaledFailure: {"__jeevesagent_failure__": {"type", "message"}}.
_JSON_FAILURE = "__jeevesagent_failure__"
_FAILURE_CLASS = (JournaledFailure.__module__, JournaledFailure.__qualname__)


class _NoGlobals(pickle.Unpickler):
    """An unpickler that resolves no global but those ``allowed``: plain data (and instances of
    the allowed classes) only."""

    def __init__(self, data: bytes, allowed: frozenset[tuple[str, str]]) -> None:
        super().__init__(io.BytesIO(data))
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the row refers to {module}.{name}, which is not read here")


@dataclass(frozen=True)
class Read:
    """A row's value as the CLI may use it: ``ok`` and ``value``, else ``note`` says why not."""

    ok: bool
    value: Any = None
    note: str = ""
    format: str = ""


def read_row(
    codec: JournalCodec,
    session_id: str,
    kind: int,
    key: str,
    row: Row,
    *,
    trust: bool,
    allowed: frozenset[tuple[str, str]] | None = None,
) -> Read:
    """The row's value by peek's rules; with ``allowed`` (a set of classes, maybe empty), an
    unsigned pickle that refers to no other global is read too (see the module docstring)."""
    p = peek(row.data, codec, session_id, kind, key, trust=trust)
    if p.decoded:
        return Read(True, p.value, format=p.format)
    if allowed is not None and p.format == "pickle" and not p.signed and not codec.signed:
        try:
            return Read(True, _NoGlobals(row.data, allowed).load(), format="pickle")
        except Exception:
            pass  # refers to something else, or not a pickle at all: peek's note says what
    return Read(False, note=p.note, format=p.format)


# -- what a session waits for --------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """What an open session waits for: a worker to run it, the end of a durable sleep, or (a
    suspended session) a signal."""

    kind: Literal["worker", "sleep", "signal"]
    name: str | None = None  # the sleep's name, or the signal's
    until: float | None = None  # the sleep's wake-up time, a signal wait's deadline (epoch s)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "until": self.until}


def _last_row(journal: SessionJournal) -> tuple[str, Row] | None:
    rows = [(r.created_at, k, r) for k, r in [*journal.steps.items(), *journal.streams.items()]]
    if not rows:
        return None
    _, key, row = max(rows, key=lambda x: (x[0], x[1]))
    return key, row


def waiting_for(
    info: SessionInfo | None,
    journal: SessionJournal,
    codec: JournalCodec,
    *,
    trust: bool,
    now: float,
) -> Waiting | None:
    """A suspended (``waiting``) session: the signal or the wake-up time its sessions row
    records. A sleep in progress (its wake-up time, journaled as the session's last row, still
    ahead); else, for a workflow session that is ``pending`` or ``interrupted``, a worker; else
    ``None`` (nothing the journal can tell: running, waiting for a signal, or ended)."""
    if info is None or info.status in ENDED_STATUSES:
        return None
    if info.status == "waiting":
        if info.waiting_for is not None:
            return Waiting("signal", info.waiting_for, info.wake_at)
        return Waiting("sleep", None, info.wake_at)
    last = _last_row(journal)
    if info.status != "pending" and last is not None and is_timer_key(last[0]):
        key, row = last
        read = read_row(codec, info.session_id, STEP, key, row, trust=trust, allowed=frozenset())
        if read.ok and type(read.value) in (int, float) and read.value > now:
            return Waiting("sleep", key[2:], float(read.value))
    if info.workflow is not None and info.status in ("pending", "interrupted"):
        return Waiting("worker")
    return None


def describe_waiting(waiting: Waiting, when: Callable[[float | None], str]) -> str:
    if waiting.kind == "worker":
        return "a worker"
    if waiting.kind == "signal":
        until = f" (until {when(waiting.until)})" if waiting.until is not None else ""
        return f"signal {waiting.name!r}{until}"
    if waiting.name is None:
        return f"a timer until {when(waiting.until)}"
    return f"{describe_key(f't:{waiting.name}')} until {when(waiting.until)}"


# -- a session's outcome --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How an ended session ended, as far as the CLI may read it."""

    status: str
    value: Read | None = None  # completed: its result (``None``: a plain session, no result)
    failure: tuple[str, str] | None = None  # failed: (type name, message), when readable
    note: str = ""  # failed: why the failure cannot be shown


def _failure(value: Any) -> tuple[str, str] | None:
    if isinstance(value, JournaledFailure):
        return str(value.type_name), str(value.message)
    if type(value) is dict and len(value) == 1 and type(value.get(_JSON_FAILURE)) is dict:
        inner = value[_JSON_FAILURE]
        if "type" in inner:
            return str(inner["type"]), str(inner.get("message", ""))
    return None


async def read_outcome(store: JournalBackend, info: SessionInfo, *, trust: bool) -> Outcome:
    """The outcome of a session that has ended (``completed``, ``failed`` or ``cancelled``)."""
    sid, codec = info.session_id, store.codec
    if info.status == "cancelled":
        return Outcome("cancelled")
    journal = await store.load_session(sid)
    if info.status == "completed":
        key = workflow_result_key()
        row = journal.steps.get(key)
        if row is None and not journal.complete:
            row = await store.load_row(sid, STEP, key)
        if row is not None:
            return Outcome("completed", read_row(codec, sid, STEP, key, row, trust=trust))
        if info.workflow is None:
            return Outcome("completed")  # a plain session has no result
    failures = {n: k for k in journal.steps if (n := failure_index(k)) is not None}
    if not failures:
        return Outcome(info.status, note=f"it ended {info.status!r} without a recorded outcome")
    key = failures[max(failures)]
    allowed = frozenset([_FAILURE_CLASS])
    read = read_row(codec, sid, STEP, key, journal.steps[key], trust=trust, allowed=allowed)
    failure = _failure(read.value) if read.ok else None
    if failure is None:
        note = read.note or f"its failure row holds {type(read.value).__name__}, not a failure"
        return Outcome("failed", note=note)
    return Outcome("failed", failure=failure)

"""The runtime's exception hierarchy.

Every error carries the ids it is about as attributes (``session_id``, ``step``) so that a caller
can act on them without parsing messages, and every error pickles (they cross process boundaries in
worker pools and are themselves valid journaled values). Also the one way a store turns its
database driver's exception into a :class:`StoreError` (:func:`driver_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "ErrorMatch",
    "InvalidNameError",
    "JournalCorruptError",
    "JournalIntegrityError",
    "JournalMismatchError",
    "RuntimeJournalError",
    "SessionBusyError",
    "SessionCancelledError",
    "StoreClosedError",
    "StoreError",
    "StreamFailedError",
    "Suspension",
    "ValueEncodingError",
    "driver_error",
]


class Suspension(BaseException):
    """Unwinds a workflow body that ``serve`` suspends (a long wait for a signal or a timer).

    Internal: raised by the wait, caught by the runtime, which records the session ``waiting``.
    A ``BaseException``, like a cancellation, so that the body's ``except Exception`` cannot
    swallow it; its ``finally`` blocks and context managers run as the body unwinds.

    :ivar waiting_for: the signal name waited for (``None``: a sleep)
    :ivar wake_at: when the session must run again, epoch seconds (``None``: no deadline)
    """

    def __init__(self, session_id: str, waiting_for: str | None, wake_at: float | None) -> None:
        what = f"signal {waiting_for!r}" if waiting_for is not None else "a timer"
        super().__init__(f"session {session_id!r} suspended while it waits for {what}")
        self.session_id = session_id
        self.waiting_for = waiting_for
        self.wake_at = wake_at


class RuntimeJournalError(Exception):
    """Base class of every error raised by :mod:`jeevesagent.runtime`.

    :ivar session_id: the session the error is about, or ``None``
    :ivar step: the journal key or step name the error is about, or ``None``
    """

    def __init__(
        self, message: str, *, session_id: str | None = None, step: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.session_id = session_id
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.session_id, self.step))

    def __str__(self) -> str:
        return self.message


def _rebuild(
    cls: type[RuntimeJournalError], message: str, session_id: str | None, step: str | None
) -> RuntimeJournalError:
    return cls(message, session_id=session_id, step=step)


class SessionBusyError(RuntimeJournalError):
    """The session is already owned by a live runtime elsewhere.

    Raised by ``session(sid)`` when another runtime (in this process or another) holds the
    session's claim and its lease is live, and inside a session whose claim was lost (taken over
    after its lease ran out): the session is stopped. Retry later, wait for the claim with
    ``session(sid, wait=seconds)``, or skip the session (another worker is running it).
    """


class SessionCancelledError(RuntimeJournalError):
    """The session was cancelled with ``cancel()``: it does not run (again), and has no result.

    Raised by ``result()`` and ``WorkflowHandle.result()`` of a cancelled session, and by
    ``run()`` of one. Cancellation is final: ``fork()`` the session to run it again.
    """


class JournalMismatchError(RuntimeJournalError):
    """The code asked for a step the journal does not match.

    Raised with ``strict=True`` when a step is called with arguments the journal does not hold
    for its name while a recorded call of that name has not replayed yet (``fn`` is not
    called), and by ``run``/``start``/``fork`` of a session that runs another workflow, was
    made with other arguments, or (``fork``'s target) exists already.
    The message names the session, the step and both fingerprints: make the workflow
    deterministic (decide inside a step what a replay must repeat), or use a new session id.
    """


class JournalCorruptError(RuntimeJournalError):
    """A journal row could not be decoded or failed its integrity check; it was not used."""


class JournalIntegrityError(JournalCorruptError):
    """A journal row failed its signature check (unsigned in a signed journal, signed with another
    key, altered, or moved); it was refused without being decoded."""


class ValueEncodingError(RuntimeJournalError, TypeError):
    """A step result, stream chunk, signal payload or step argument could not be encoded.

    Nothing was written to the journal.
    """


class StoreError(RuntimeJournalError):
    """The journal store failed (the driver's exception is the ``__cause__``).

    Raised where the runtime or a bundled store calls its database: ``sqlite3`` and ``asyncpg``
    exceptions are translated at the store boundary. What was being written is not recorded;
    in buffered mode the session fails at once and refuses later writes, so the journal stays a
    prefix. Opening the session again resumes from what was committed.
    """


class StoreClosedError(StoreError):
    """The store (or runtime) was used after ``aclose()``.

    Every method of a closed store raises it, and so do the runtime's methods once the runtime
    (or the store it was given) is closed: open a new store or runtime.
    """


class StreamFailedError(RuntimeJournalError):
    """``read_stream``: the session ended (completed, failed or cancelled) without completing
    the stream step it was reading, or without ever running a stream step of that name. The
    chunks read before it are all the stream will ever have."""


class InvalidNameError(RuntimeJournalError, ValueError, TypeError):
    """A session id, step name, signal name, idempotency key or sleep name that no store can
    hold (not a str, empty, a NUL character, a lone surrogate, too long). Raised before anything
    runs or is written; a ``ValueError`` (and, for a value that is not a str, a ``TypeError``)."""


#: How a store's mapping recognises a driver exception: an exception class (or a tuple of them),
#: or a predicate.
ErrorMatch = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def driver_error(
    exc: BaseException,
    hints: Sequence[tuple[ErrorMatch, str]],
    message: Callable[[str], str],
    *,
    session_id: str | None = None,
    step: str | None = None,
) -> StoreError:
    """The :class:`StoreError` for a database driver's exception (raise it ``from exc``).

    ``hints`` is the store's own mapping, tried in order: the first ``(match, hint)`` that
    matches ``exc`` gives the hint, what the user should do (the last entry's hint when none
    matches); ``message(hint)`` writes the store's message around it. The error carries the ids.
    """
    hint = next((h for match, h in hints if _matches(match, exc)), hints[-1][1])
    return StoreError(message(hint), session_id=session_id, step=step)


def _matches(match: ErrorMatch, exc: BaseException) -> bool:
    if isinstance(match, type | tuple):
        return isinstance(exc, match)
    return match(exc)

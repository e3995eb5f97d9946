"""What a session id, step name, signal name, idempotency key or sleep name may be.

Checked the same way for every runtime and store -- the in-memory store too -- before anything
runs or is written, so a name one store cannot hold never gets as far as a shared commit (where
it would fail other sessions' records with it): a str, not empty, UTF-8 encodable (no lone
surrogates: SQLite refuses them), without NUL characters (PostgreSQL ``text`` cannot hold them),
and at most :data:`MAX_NAME_BYTES` bytes in UTF-8 (a journal row's key must fit in one index
entry of PostgreSQL's btree, with the session id beside it).
"""

from __future__ import annotations

from .._errors import InvalidNameError

__all__ = ["MAX_NAME_BYTES", "check_name", "check_session_id", "check_signal_target"]

MAX_NAME_BYTES = 1024


def _problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a str"
    if not value:
        return "it is empty"
    if "\x00" in value:
        return "it contains a NUL character (PostgreSQL cannot store it)"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return (
            f"it is not valid Unicode text (a lone surrogate {value[exc.start]!r} at index "
            f"{exc.start}; SQLite cannot store it)"
        )
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long in UTF-8, more than the {MAX_NAME_BYTES} allowed"
    return None


def check_session_id(session_id: object) -> None:
    """Raise :class:`InvalidNameError` if ``session_id`` cannot be a session id."""
    problem = _problem(session_id)
    if problem is not None:
        raise InvalidNameError(
            f"session id {session_id!r} cannot be used: {problem}. Use a non-empty str of "
            "printable text, e.g. an order number or a UUID.",
            session_id=session_id if isinstance(session_id, str) else None,
        )


def check_name(what: str, name: object, session_id: str | None = None) -> None:
    """Raise :class:`InvalidNameError` if ``name`` cannot be a ``what`` (e.g. ``"step name"``)
    of session ``session_id``. Nothing has run or been written when it raises."""
    problem = _problem(name)
    if problem is not None:
        where = f"session {session_id!r}: " if session_id is not None else ""
        raise InvalidNameError(
            f"{where}{what} {name!r} cannot be used: {problem}. Nothing ran and nothing was "
            f"recorded; give the {what} a non-empty str of printable text.",
            session_id=session_id,
            step=name if isinstance(name, str) else None,
        )


def check_signal_target(session_id: object, name: object) -> None:
    """The session id and signal name of ``signal``/``wait_for_signal``/``poll_signal``."""
    check_session_id(session_id)
    check_name("signal name", name, session_id)  # type: ignore[arg-type]

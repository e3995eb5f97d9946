"""Helpers of the exported conformance suite (:mod:`jeevesagent.runtime.testing`): opening and
closing the backends under test, and making and reading rows with a backend's own codec, as the
runtime does. Imports no test framework.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .._core.keys import signal_journal_key
from .._core.values import decode_value, encode_value, signal_context
from .backend import STEP, JournalBackend, Record, Row

__all__ = [
    "A",
    "B",
    "LIVE",
    "BackendOpener",
    "OpenedBackends",
    "decode_row",
    "journal_rows",
    "payload",
    "record",
    "send",
    "signal_key",
    "step_value",
    "wait_until_expired",
]

A, B = "owner-a", "owner-b"  # owner tokens (a backend stores them, never parses them)
LIVE = 600.0  # a lease that does not run out during a test

#: Makes a backend on the test's storage: a function returning a backend or an awaitable of one.
BackendOpener = Callable[[], JournalBackend | Awaitable[JournalBackend]]


class OpenedBackends:
    """The backends one test opened with its opener; :meth:`aclose` closes each of them once."""

    def __init__(self, opener: BackendOpener) -> None:
        self._opener = opener
        self._opened: list[JournalBackend] = []

    async def open(self) -> JournalBackend:
        made = self._opener()
        backend = await made if inspect.isawaitable(made) else made
        if not isinstance(backend, JournalBackend):
            raise TypeError(
                f"open_backend() returned {type(backend).__name__}, not a JournalBackend: the "
                "conformance suite checks JournalBackend subclasses (wrap a five-method store "
                "in the store adapter first)"
            )
        self._opened.append(backend)
        return backend

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for backend in {id(b): b for b in self._opened}.values():
                await backend.aclose()


def record(
    backend: JournalBackend, session_id: str, key: str, value: Any, kind: int = STEP
) -> Record:
    """A journal row of ``value``, encoded with the backend's codec as the runtime encodes it."""
    data = encode_value(backend.codec, value, session_id=session_id, step=key, kind=kind)
    return Record(session_id, kind, key, data, time.time())


def decode_row(
    backend: JournalBackend, session_id: str, key: str, row: Row, kind: int = STEP
) -> Any:
    return decode_value(backend.codec, row.data, session_id=session_id, step=key, kind=kind)


def signal_key(name: str, index: int) -> str:
    """The journal key under which a session keeps the ``index``-th signal ``name`` it took."""
    return signal_journal_key(name, index)


async def send(backend: JournalBackend, session_id: str, name: str, value: Any) -> None:
    """Send a signal whose payload is encoded with the backend's codec, as the runtime does."""
    data = encode_value(
        backend.codec,
        value,
        session_id=session_id,
        step=f"signal {name!r}",
        what="payload",
        context=signal_context(name),
    )
    await backend.send_signal(session_id, name, data, time.time())


def payload(backend: JournalBackend, session_id: str, name: str, row: Row | None) -> Any:
    """The payload of a signal row (taken from the mailbox, or its receipt in the journal)."""
    assert row is not None, f"no signal {name!r} was taken for session {session_id!r}"
    return decode_value(
        backend.codec,
        row.data,
        session_id=session_id,
        step=f"signal {name!r}",
        context=signal_context(name),
    )


async def step_value(backend: JournalBackend, session_id: str, key: str) -> Any:
    """The value ``get_step`` returns for a key that must be recorded."""
    entry = await backend.get_step(session_id, key)
    assert entry is not None, f"step {key!r} of session {session_id!r} is not recorded"
    return entry.value


async def journal_rows(
    backend: JournalBackend, session_id: str, kind: int, keys: Sequence[str]
) -> dict[str, Row]:
    """The rows of ``keys`` as the runtime finds them: in :meth:`~JournalBackend.load_session`,
    or, for a backend whose load is not ``complete``, through ``read_row``. Keys without a row
    are left out."""
    journal = await backend.load_session(session_id)
    listed = journal.steps if kind == STEP else journal.streams
    found = {k: listed[k] for k in keys if k in listed}
    if not journal.complete:
        for key in keys:
            if key not in found and (row := await backend.read_row(session_id, kind, key)):
                found[key] = row
    return found


async def wait_until_expired(backend: JournalBackend, lease_expires: float | None) -> None:
    """Wait until the backend's own clock is past ``lease_expires``."""
    assert lease_expires is not None, "a granted claim has a lease"
    with anyio.fail_after(30):
        while await backend.now() <= lease_expires:  # noqa: ASYNC110 - polls a clock
            await anyio.sleep(0.02)

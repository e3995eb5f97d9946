"""The signal side of :class:`~jeevesagent.runtime.JournaledRuntime`: sending into a session's
durable mailbox, receiving with the receipt journaled in the same transaction, and replaying
receipts. A mixin, so the runtime class stays readable; it uses the runtime's journal access
(``_record``, ``_decode``, ``_flush``, ``_lookup_step``) declared below for the type checker.

A signed signal carries a random nonce bound into its signature: each send is unique, so a copy
of a signed row -- someone with write access duplicating an approval in the mailbox or the
journal -- is recognized by its signature and received only once per session (the first time
in journal order, so a replay skips the same copies).
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from .._core import observe as _observe
from .._core.base import Mailbox
from .._core.keys import (
    signal_journal_key,
    signal_outcome_key,
)
from .._core.names import check_signal_target
from .._core.values import (
    _HEADER,
    MAGIC,
    NONCE_BYTES,
    NONCE_MARK,
    JournalCodec,
    decode_value,
    encode_value,
    signal_context,
    split_nonce,
)
from .._errors import SessionBusyError
from .._journal.backend import STEP, Fenced, JournalBackend, JournalEntry, Record, Row
from .state import JournaledState

__all__ = ["SignalsMixin", "open_signal", "seal_signal"]


def seal_signal(codec: JournalCodec, session_id: str, name: str, payload: Any) -> bytes:
    """Encode a signal's payload for the mailbox; signed (with a nonce) if ``codec`` signs."""
    nonce = os.urandom(NONCE_BYTES) if codec.signed else b""
    context = signal_context(name) + (f"#{nonce.hex()}" if nonce else "")
    data = encode_value(
        codec,
        payload,
        session_id=session_id,
        step=f"signal {name!r}",
        what="payload",
        context=context,
    )
    return NONCE_MARK + nonce + data if nonce else data


def open_signal(
    codec: JournalCodec, data: bytes, session_id: str, name: str, step: str
) -> tuple[Any, bytes | None]:
    """Decode a signal row: its payload, and its signature (``None`` if unsigned), which
    identifies this one send."""
    data, context = split_nonce(data, signal_context(name))
    value = decode_value(codec, data, session_id=session_id, step=step, context=context)
    tag = data[len(MAGIC) : _HEADER] if data[: len(MAGIC)] == MAGIC else None
    return value, tag


class SignalsMixin:
    # Provided by JournaledRuntime (and BaseRuntime).
    _states: dict[str, JournaledState]
    _native: JournalBackend | None
    _codec: JournalCodec
    _mailbox: Mailbox
    _wakeups: dict[str, anyio.Event]
    _pushed: bool | None
    poll_interval: float
    owner_id: str

    if TYPE_CHECKING:

        def _check_open(self, session_id: str | None = None, step: str | None = None) -> None: ...

        async def _flush(self, state: JournaledState) -> None: ...

        async def _record(
            self, state: JournaledState, kind: int, key: str, value: Any, data: bytes
        ) -> Any: ...

        def _decode(self, state: JournaledState, key: str, row: Row | JournalEntry) -> Any: ...

        async def _lookup_step(
            self, state: JournaledState, key: str
        ) -> Row | JournalEntry | None: ...

    async def signal(self, session_id: str, name: str, payload: Any) -> None:
        """Send a signal to a session (FIFO per name; each signal is received once).

        The payload is encoded now, so a payload that cannot be journaled fails here, at the
        sender. With a bundled store the signal is committed to the session's mailbox before this
        returns -- whether the session is open here, in another process or host, or not at all --
        and it is delivered when the session waits for it.
        """
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        data = seal_signal(self._codec, session_id, name, payload)
        native = self._native
        if native is None:
            self._mailbox.put(session_id, name, data)
            _observe.signal_sent(session_id, name)
            return
        native.check_open(session_id, name)
        await native.send_signal(session_id, name, data, time.time())
        _observe.signal_sent(session_id, name)
        state = self._states.get(session_id)
        if state is not None and state.claimed:
            # The session runs here: move it into its journal now, so poll_signal sees it too.
            await self._fetch(state, name)
        self._wake(session_id)

    # -- receive outcomes ---------------------------------------------------------------------
    # Every receive of a signal in a session open here is journaled, in order, at index n of its
    # name: a payload at ``g:name:n`` (the mailbox row moved as is), or -- a wait that timed
    # out, a poll that found nothing -- an outcome at ``o:name:n``. A replay meets the same
    # outcomes in the same order, so it takes the same branch as the first run.

    def _next_outcome(self, state: JournaledState, name: str) -> tuple[str, Any] | None:
        """Consume the next journaled receive of ``name``, if the journal holds one:
        ``("payload", value)``, ``("timeout", None)`` or ``("nothing", None)``."""
        while True:
            index = state.signals_received.get(name, 0)
            key = signal_journal_key(name, index)
            row = state.steps.get(key)
            if row is None:
                break
            state.signals_received[name] = index + 1
            if isinstance(row, JournalEntry):  # a third-party store: decoded already
                value = row.value
            else:
                value, tag = open_signal(self._codec, row.data, state.id, name, key)
                if tag is not None:
                    if tag in state.signal_tags:
                        _observe.signal_duplicate(state.id, name)
                        continue  # a copy of a signed signal received before: never twice
                    state.signal_tags.add(tag)
            _observe.signal_received(state.id, name)
            return "payload", value
        key = signal_outcome_key(name, index)
        row = state.steps.get(key)
        if row is None:
            return None
        state.signals_received[name] = index + 1
        return str(self._decode(state, key, row)), None

    async def _replayed_wait(self, state: JournaledState, name: str) -> tuple[bool, Any]:
        """The next journaled receive for a wait: its payload, or ``TimeoutError`` if that
        wait timed out. A poll's "nothing" met here (the code changed) is passed over."""
        while True:
            await self._read_outcome(state, name)
            outcome = self._next_outcome(state, name)
            if outcome is None:
                return False, None
            what, value = outcome
            if what == "payload":
                return True, value
            if what == "timeout":
                raise TimeoutError(
                    f"session {state.id!r}: the wait for signal {name!r} timed out "
                    "(replayed from the journal: it timed out when the session first ran)"
                )

    async def _read_outcome(self, state: JournaledState, name: str) -> None:
        """A third-party store: read the next receive of ``name`` into ``state`` (bundled
        stores hold the whole journal already; this costs them nothing)."""
        if self._native is not None:
            return
        index = state.signals_received.get(name, 0)
        if await self._lookup_step(state, signal_journal_key(name, index)) is None:
            await self._lookup_step(state, signal_outcome_key(name, index))

    def _outcome(self, state: JournaledState, name: str, what: str) -> tuple[str, bytes]:
        """Take the next receive index of ``name`` for outcome ``what``: its key and row."""
        index = state.signals_received.get(name, 0)
        key = signal_outcome_key(name, index)
        data = b""
        if self._native is not None:
            data = encode_value(self._codec, what, session_id=state.id, step=key)
            state.receipt_next[name] = index + 1
        state.signals_received[name] = index + 1
        return key, data

    async def _record_outcome(self, state: JournaledState, name: str, what: str) -> None:
        key, data = self._outcome(state, name, what)
        await self._record(state, STEP, key, what, data)

    def _buffer_outcome(self, state: JournaledState, name: str, what: str) -> None:
        """Journal an outcome without awaiting (poll_signal is synchronous): it commits with
        the session's next record, or when the session exits."""
        assert self._native is not None  # a third-party store cannot be read here: see poll
        key, data = self._outcome(state, name, what)
        record = Record(state.id, STEP, key, data, time.time())
        state.steps[key] = Row(data, record.created_at)
        state.buffer.append(record)

    async def _fetch(self, state: JournaledState, name: str) -> bool:
        """Move the oldest mailbox signal ``name`` into the session's journal (one transaction:
        taken from the mailbox and journaled as received, or neither). ``False`` if none."""
        native = self._native
        assert native is not None
        index = state.receipt_next.get(name)
        if index is None:
            index = state.signals_received.get(name, 0)
            while (
                signal_journal_key(name, index) in state.steps
                or signal_outcome_key(name, index) in state.steps
            ):
                index += 1
        key = signal_journal_key(name, index)
        if state.buffer:
            await self._flush(state)  # earlier records first: the journal stays a prefix
        try:
            row = await native.take_signal(state.id, name, key, self.owner_id)
        except Fenced:
            _observe.signal_fenced(state.id, name)
            raise SessionBusyError(
                f"session {state.id!r}: another runtime took the session over; signal {name!r} "
                "was left in its mailbox for it.",
                session_id=state.id,
                step=key,
            ) from None
        if row is None:
            return False
        state.steps[key] = row
        state.receipt_next[name] = index + 1
        return True

    def _wake(self, session_id: str) -> None:
        event = self._wakeups.pop(session_id, None)
        if event is not None:
            event.set()

    async def _idle(self, native: JournalBackend, event: anyio.Event, limit: float | None) -> None:
        """Wait for a signal notice (this runtime's own, or the store's push), or the poll,
        for at most ``limit`` seconds. Asked before every wait: pushes stop while a lost
        listener is being reopened."""
        self._pushed = await native.watch(self._wake)
        wait = max(1.0, self.poll_interval) if self._pushed else self.poll_interval
        with anyio.move_on_after(wait if limit is None else min(wait, limit)):
            await event.wait()

    async def wait_for_signal(
        self, session_id: str, name: str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the next signal ``name``; ``TimeoutError`` after ``timeout`` seconds.

        In a session open in this runtime the receipt is journaled atomically with taking the
        signal: a replay returns the same payload without waiting, and after a crash a signal
        is either still waiting or journaled as received -- never lost, never received twice.
        A wait that timed out is journaled too: its replay raises ``TimeoutError`` at once, even
        if the signal has arrived since (it is left for the next wait).
        """
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        state = self._states.get(session_id)
        native = self._native
        if native is None:
            return await self._wait_in_process(state, session_id, name, timeout)
        native.check_open(session_id, name)
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            event = self._wakeups.setdefault(session_id, anyio.Event())
            if state is not None and state.claimed:
                replayed, value = await self._replayed_wait(state, name)
                if replayed:
                    return value
                if await self._fetch(state, name):
                    continue
            else:
                row = await native.take_signal(session_id, name, None, None)
                if row is not None:
                    return self._decode_signal(session_id, name, row.data)
            # The timeout ends only a wait, never a store call: whether a signal was taken is
            # always known, and a timeout is journaled only when none was.
            left = None if deadline is None else deadline - anyio.current_time()
            if left is not None and left <= 0:
                if state is not None and state.claimed:
                    await self._record_outcome(state, name, "timeout")
                raise TimeoutError(
                    f"session {session_id!r}: no signal {name!r} arrived within {timeout} s"
                )
            await self._idle(native, event, left)
            self._check_open(session_id, name)
            native.check_open(session_id, name)

    async def _wait_in_process(
        self, state: JournaledState | None, session_id: str, name: str, timeout: float | None
    ) -> Any:
        # A third-party store has no mailbox: signals queue in this process.
        if state is None:
            data = await self._mailbox.get(session_id, name, timeout)
            return self._decode_signal(session_id, name, data)
        replayed, value = await self._replayed_wait(state, name)
        if replayed:
            return value
        try:
            data = await self._mailbox.get(session_id, name, timeout)
        except TimeoutError:
            await self._record_outcome(state, name, "timeout")
            raise
        key, value = self._receipt(state, name, data)
        await self._record(state, STEP, key, value, data)
        return value

    def _decode_signal(self, session_id: str, name: str, data: bytes) -> Any:
        _observe.signal_received(session_id, name)  # a receipt outside a session open here
        return open_signal(self._codec, data, session_id, name, f"signal {name!r}")[0]

    def _receipt(self, state: JournaledState, name: str, data: bytes) -> tuple[str, Any]:
        _observe.signal_received(state.id, name)
        index = state.signals_received.get(name, 0)
        state.signals_received[name] = index + 1
        key = signal_journal_key(name, index)
        return key, open_signal(self._codec, data, state.id, name, key)[0]

    def poll_signal(self, session_id: str, name: str) -> Any:
        """Take the next signal ``name`` without waiting; ``None`` if none is at hand.

        Synchronous, so it reads no store: in a session open in this runtime it returns the next
        journaled receipt -- a replay, or a signal already moved into the journal (every signal
        sent through this runtime is, at once; a signal sent from elsewhere is, once a
        ``wait_for_signal`` of the session has fetched it). Finding nothing is journaled too
        (it commits with the session's next record), so a replay of this call returns ``None``
        again even if a signal has arrived since; that signal is left for the next receive.
        Each such poll adds a journal row: to wait for a signal, prefer ``wait_for_signal``
        with a ``timeout`` over polling in a loop. With a third-party store, signals queue in
        this process, receipts replay through ``wait_for_signal``, and "nothing" is not
        journaled.
        """
        check_signal_target(session_id, name)
        self._check_open(session_id, name)
        state = self._states.get(session_id)
        if state is not None:
            outcome = self._next_outcome(state, name)
            if outcome is not None:
                return outcome[1]  # a payload, or None: what this poll returned the first time
        if self._native is not None:
            if state is not None and state.claimed:
                self._buffer_outcome(state, name, "nothing")
                return None
            row = self._native.take_signal_nowait(session_id, name)  # in-memory store only
            if row is None:
                return None
            return self._decode_signal(session_id, name, row.data)
        got, data = self._mailbox.get_nowait(session_id, name)
        if not got:
            # Not journaled with a third-party store: this synchronous call cannot read the
            # store to learn whether this receive was journaled already (the known limitation).
            return None
        if state is None:
            return self._decode_signal(session_id, name, data)
        key, value = self._receipt(state, name, data)
        # A third-party store: commit in the session's task group (this method is synchronous).
        state.steps[key] = JournalEntry(value, time.time())
        if state.task_groups:
            state.spawn(partial(self._record, state, STEP, key, value, data))
        return value

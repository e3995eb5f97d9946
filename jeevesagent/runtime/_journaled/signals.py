"""The signal inbox of :class:`~jeevesagent.runtime.JournaledRuntime`: sending into a session's
durable mailbox, receiving with the receipt journaled in the same transaction, and replaying
receipts. The runtime composes one :class:`SignalInbox`, which journals through the runtime's
:class:`~.recorder.Recorder`.

A signed signal carries a random nonce bound into its signature: each send is unique, so a copy
of a signed row -- someone with write access duplicating an approval in the mailbox or the
journal -- is recognized by its signature and received only once per session (the first time
in journal order, so a replay skips the same copies).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from .._core import observe as _observe
from .._core.keys import (
    signal_deadline_key,
    signal_journal_key,
    signal_outcome_key,
)
from .._core.values import (
    NONCE_BYTES,
    NONCE_MARK,
    JournalCodec,
    decode_value,
    encode_value,
    row_signature,
    signal_context,
    split_nonce,
)
from .._errors import SessionBusyError
from .._journal.backend import STEP, Fenced, JournalBackend
from .recorder import Recorder
from .state import JournaledState

__all__ = ["SignalInbox", "open_signal", "seal_signal"]


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
    tag = row_signature(data)
    return value, tag


class SignalInbox:
    """Sends, receives and replays the signals of one runtime's sessions.

    :param states: the runtime's open sessions by id (read, never changed here)
    :param check_open: raises ``StoreClosedError`` once the runtime is closed
    """

    def __init__(
        self,
        backend: JournalBackend,
        recorder: Recorder,
        states: Mapping[str, JournaledState],
        check_open: Callable[[str | None, str | None], None],
        owner_id: str,
        poll_interval: float,
    ) -> None:
        self.backend = backend
        self.recorder = recorder
        self.codec: JournalCodec = backend.codec
        self.states = states
        self.check_open = check_open
        self.owner_id = owner_id
        self.poll_interval = poll_interval
        self.wakeups: dict[str, anyio.Event] = {}
        self.pushed: bool | None = None  # does the store push signal notices? (None: not asked)

    def _check_open(self, session_id: str, name: str) -> None:
        self.check_open(session_id, name)
        self.backend.check_open(session_id, name)

    async def send(self, session_id: str, name: str, payload: Any) -> None:
        """See :meth:`JournaledRuntime.signal`."""
        self._check_open(session_id, name)
        data = seal_signal(self.codec, session_id, name, payload)
        await self.backend.send_signal(session_id, name, data, time.time())
        _observe.signal_sent(session_id, name)
        state = self.states.get(session_id)
        if state is not None and state.claimed:
            # The session runs here: move it into its journal now, so poll_signal sees it too.
            await self.fetch(state, name)
        self._wake(session_id)

    async def fetch_pending(self, state: JournaledState, names: list[str]) -> None:
        """Move every signal waiting in the session's mailbox under ``names`` (found when the
        session opened: signals sent while it was not running) into its journal, in order."""
        for name in names:
            while await self.fetch(state, name):
                pass

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
            value, tag = open_signal(self.codec, row.data, state.id, name, key)
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
        return str(self.recorder.decode(state, key, row)), None

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
        """Have the next receive of ``name`` in ``state`` if the journal holds one (a loaded
        journal holds it already: this costs nothing then)."""
        index = state.signals_received.get(name, 0)
        if await self.recorder.lookup_step(state, signal_journal_key(name, index)) is None:
            await self.recorder.lookup_step(state, signal_outcome_key(name, index))

    def _outcome_key(self, state: JournaledState, name: str) -> str:
        """Take the next receive index of ``name`` for an outcome: its key."""
        index = state.signals_received.get(name, 0)
        state.receipt_next[name] = index + 1
        state.signals_received[name] = index + 1
        return signal_outcome_key(name, index)

    async def fetch(self, state: JournaledState, name: str) -> bool:
        """Move the oldest mailbox signal ``name`` into the session's journal (one transaction:
        taken from the mailbox and journaled as received, or neither). ``False`` if none."""
        index = state.receipt_next.get(name)
        if index is None:
            index = state.signals_received.get(name, 0)
            lookup = self.recorder.lookup_step
            while (
                await lookup(state, signal_journal_key(name, index)) is not None
                or await lookup(state, signal_outcome_key(name, index)) is not None
            ):
                index += 1
        key = signal_journal_key(name, index)
        if state.buffer:
            await self.recorder.flush(state)  # earlier records first: the journal stays a prefix
        try:
            row = await self.backend.take_signal(state.id, name, key, self.owner_id)
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
        event = self.wakeups.pop(session_id, None)
        if event is not None:
            event.set()

    def wake(self, session_id: str) -> None:
        """Wake whoever waits on ``wakeups[session_id]`` (signal waiters, result waiters, the
        cancel watcher of a body running here)."""
        self._wake(session_id)

    async def watch(self) -> bool:
        """Have the store's notices wake ``wakeups``; ``True`` while it pushes them."""
        self.pushed = await self.backend.watch(self._wake)
        return self.pushed

    def wake_all(self) -> None:
        """The runtime closes: every waiter wakes, sees it closed, and raises."""
        for event in self.wakeups.values():
            event.set()
        self.wakeups.clear()

    async def _idle(self, event: anyio.Event, limit: float | None) -> None:
        """Wait for a signal notice (this runtime's own, or the store's push), or the poll,
        for at most ``limit`` seconds. Asked before every wait: pushes stop while a lost
        listener is being reopened."""
        await self.watch()
        wait = max(1.0, self.poll_interval) if self.pushed else self.poll_interval
        with anyio.move_on_after(wait if limit is None else min(wait, limit)):
            await event.wait()

    async def wait(
        self,
        session_id: str,
        name: str,
        timeout: float | None,
        current: JournaledState | None = None,
    ) -> Any:
        """See :meth:`JournaledRuntime.wait_for_signal`. ``current``: the session the caller
        runs in; a wait of its own body under ``serve`` may suspend it."""
        self._check_open(session_id, name)
        state = self.states.get(session_id)
        journaled = state is not None and state.claimed
        # The deadline is epoch seconds: in a session open here it is journaled (d:name:n) the
        # first time the wait blocks, so it holds across suspension and restarts.
        deadline = None if timeout is None or journaled else time.time() + timeout
        suspending = state is not None and current is state and state.suspend_after is not None
        if suspending:
            assert state is not None
            state.waits += 1
        try:
            return await self._wait(state, session_id, name, timeout, deadline, suspending)
        finally:
            if suspending:
                assert state is not None
                state.waits -= 1

    async def _wait(
        self,
        state: JournaledState | None,
        session_id: str,
        name: str,
        timeout: float | None,
        deadline: float | None,
        suspending: bool,
    ) -> Any:
        started = anyio.current_time()
        while True:
            event = self.wakeups.setdefault(session_id, anyio.Event())
            if state is not None and state.claimed:
                replayed, value = await self._replayed_wait(state, name)
                if replayed:
                    return value
                if await self.fetch(state, name):
                    continue
                if timeout is not None and deadline is None:
                    deadline = await self._deadline(state, name, timeout)
            else:
                row = await self.backend.take_signal(session_id, name, None, None)
                if row is not None:
                    return self._decode_signal(session_id, name, row.data)
            # The timeout ends only a wait, never a store call: whether a signal was taken is
            # always known, and a timeout is journaled only when none was.
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                if state is not None and state.claimed:
                    key = self._outcome_key(state, name)
                    data = self.recorder.encode(state, key, "timeout")
                    await self.recorder.record(state, STEP, key, "timeout", data)
                raise TimeoutError(
                    f"session {session_id!r}: no signal {name!r} arrived within {timeout} s"
                )
            if suspending:
                assert state is not None
                assert state.suspend_after is not None
                until_suspend = started + state.suspend_after - anyio.current_time()
                if until_suspend <= 0 and state.may_suspend():
                    # Under serve: the body has waited long enough; it is suspended (a signal
                    # sent from now on stays in the mailbox, and a worker runs it again).
                    raise state.suspend(name, deadline)
                if until_suspend > 0:
                    left = until_suspend if left is None else min(left, until_suspend)
            await self._idle(event, left)
            self._check_open(session_id, name)

    async def _deadline(self, state: JournaledState, name: str, timeout: float) -> float:
        """The deadline of the wait for the next receive of ``name``: journaled (``d:``) the
        first time, read back after a suspension or a restart."""
        key = signal_deadline_key(name, state.signals_received.get(name, 0))
        row = await self.recorder.lookup_step(state, key)
        if row is not None:
            return float(self.recorder.decode(state, key, row))
        deadline = time.time() + timeout
        data = self.recorder.encode(state, key, deadline)
        return float(await self.recorder.record(state, STEP, key, deadline, data))

    def _decode_signal(self, session_id: str, name: str, data: bytes) -> Any:
        _observe.signal_received(session_id, name)  # a receipt outside a session open here
        return open_signal(self.codec, data, session_id, name, f"signal {name!r}")[0]

    def poll(self, session_id: str, name: str) -> Any:
        """See :meth:`JournaledRuntime.poll_signal`."""
        self._check_open(session_id, name)
        state = self.states.get(session_id)
        if state is not None:
            outcome = self._next_outcome(state, name)
            if outcome is not None:
                return outcome[1]  # a payload, or None: what this poll returned the first time
            if state.claimed:
                if state.loaded:
                    self.recorder.buffer(state, self._outcome_key(state, name), "nothing")
                # Not loaded (a five-method store): this synchronous call cannot read the store
                # to learn whether this receive was journaled already, so "nothing" is not
                # journaled (the known limitation of such stores).
                return None
        row = self.backend.take_signal_nowait(session_id, name)  # a local store only
        if row is None:
            return None
        return self._decode_signal(session_id, name, row.data)

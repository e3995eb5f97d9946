"""Step identity: journal keys, every namespace in this one module (the argument fingerprint in
them comes from ``_fingerprint``).

Journal keys live in namespaces told apart by their first two characters, so a key of one
kind can never equal a key of another:

* ``s:<name>:<fingerprint>`` -- a plain step (or stream step) identified by name and arguments;
* ``k:<idempotency key>`` -- a step called with ``idempotency_key=``;
* ``g:<signal name>:<n>`` -- the n-th signal of that name received by the session;
* ``o:<signal name>:<n>`` -- the n-th receive of that name, when it got no payload (a wait that
  timed out, a poll that found nothing);
* ``t:<name>`` -- the wake-up time of a durable ``sleep``;
* ``l:<name>`` -- a step imported from a jeevesagent 0.9.7 journal, which keyed steps by name
  alone: a step of that name whose own key is not journaled replays it.

The fingerprint is a fixed-length hex digest at the end of the key, so two different names can
never produce the same key either.
"""

from __future__ import annotations

from .fingerprint import FINGERPRINT_CHARS, fingerprint

__all__ = [
    "FINGERPRINT_CHARS",
    "LEGACY_PREFIX",
    "describe_key",
    "fingerprint",
    "idempotency_journal_key",
    "is_legacy_key",
    "is_signal_key",
    "is_timer_key",
    "legacy_journal_key",
    "signal_journal_key",
    "signal_outcome_key",
    "step_journal_key",
    "timer_journal_key",
]


def step_journal_key(name: str, fp: str) -> str:
    return f"s:{name}:{fp}"


def idempotency_journal_key(key: str) -> str:
    return f"k:{key}"


def signal_journal_key(name: str, index: int) -> str:
    return f"g:{name}:{index}"


def signal_outcome_key(name: str, index: int) -> str:
    """The key of receive number ``index`` of signal ``name`` when it received no payload: a
    wait that timed out, or a poll that found nothing. Never the key of a payload (``g:``), so
    no payload can pose as an outcome."""
    return f"o:{name}:{index}"


#: The namespace of keys imported from a jeevesagent 0.9.7 journal (the SQL stores' import
#: writes it as a literal: ``'l:' || step_name``).
LEGACY_PREFIX = "l:"


def legacy_journal_key(name: str) -> str:
    """The key of a step imported from a jeevesagent 0.9.7 journal (keyed by name alone)."""
    return f"{LEGACY_PREFIX}{name}"


def timer_journal_key(name: str) -> str:
    return f"t:{name}"


def is_signal_key(key: str) -> bool:
    """A signal receipt: a payload received (``g:``) or a receive that got none (``o:``)."""
    return key.startswith(("g:", "o:"))


def is_timer_key(key: str) -> bool:
    """The wake-up time of a durable ``sleep`` (``t:``)."""
    return key.startswith("t:")


def is_legacy_key(key: str) -> bool:
    """A row imported from a jeevesagent 0.9.7 journal (``l:``)."""
    return key.startswith(LEGACY_PREFIX)


_HEX = frozenset("0123456789abcdef")


def describe_key(key: str) -> str:
    """A readable form of a journal key for messages, listings and errors' ``step``: the step's
    name, ``idempotency_key='K'``, ``signal 'name' #n``, ``sleep 'name'``; any other text (a name
    already, or a key of a third-party store) as is."""
    if key.startswith("s:"):
        name, sep, fp = key[2:].rpartition(":")
        if sep and len(fp) == FINGERPRINT_CHARS and all(c in _HEX for c in fp):
            return name
        return key
    if key.startswith("k:"):
        return f"idempotency_key={key[2:]!r}"
    if key.startswith("g:"):
        name, _, idx = key[2:].rpartition(":")
        return f"signal {name!r} #{idx}"
    if key.startswith("o:"):
        name, _, idx = key[2:].rpartition(":")
        return f"signal {name!r} #{idx} (no payload)"
    if key.startswith("t:"):
        return f"sleep {key[2:]!r}"
    if key.startswith("l:"):
        return key[2:]
    return key

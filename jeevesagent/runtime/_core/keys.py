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
* ``c:<stream key>:<offset>`` -- a batch of a stream step's chunks journaled while it runs
  (``<stream key>`` is the stream step's own ``s:`` key, ``<offset>`` the index of the batch's
  first chunk in the stream): the recorded prefix of a stream that has not completed;
* ``d:<signal name>:<n>`` -- the deadline (epoch seconds) of the wait with a timeout that makes
  receive n of that name, so the timeout holds across suspension and restarts;
* ``l:<name>`` -- a step imported from a jeevesagent 0.9.7 journal, which keyed steps by name
  alone: a step of that name whose own key is not journaled replays it.

The fingerprint is a fixed-length hex digest at the end of the key, so two different names can
never produce the same key either.
"""

from __future__ import annotations

from .fingerprint import FINGERPRINT_CHARS, fingerprint

__all__ = [
    "chunks_journal_key",
    "chunks_prefix",
    "is_chunks_key",
    "split_chunks_key",
    "workflow_failure_key",
    "failure_index",
    "workflow_result_key",
    "workflow_args_key",
    "step_name_of",
    "is_workflow_key",
    "FINGERPRINT_CHARS",
    "describe_key",
    "fingerprint",
    "idempotency_journal_key",
    "is_legacy_key",
    "is_signal_key",
    "is_signal_receipt",
    "is_timer_key",
    "legacy_journal_key",
    "receipt_signal_name",
    "signal_journal_key",
    "signal_deadline_key",
    "signal_outcome_key",
    "split_step_key",
    "step_journal_key",
    "timer_journal_key",
]

STEP = "s:"
IDEMPOTENCY = "k:"
SIGNAL = "g:"
OUTCOME = "o:"
TIMER = "t:"
DEADLINE = "d:"
LEGACY = "l:"
WORKFLOW = "w:"
CHUNKS = "c:"


def step_journal_key(name: str, fp: str) -> str:
    return f"{STEP}{name}:{fp}"


def idempotency_journal_key(key: str) -> str:
    return f"{IDEMPOTENCY}{key}"


def signal_journal_key(name: str, index: int) -> str:
    return f"{SIGNAL}{name}:{index}"


def signal_outcome_key(name: str, index: int) -> str:
    """The key of receive number ``index`` of signal ``name`` when it received no payload: a
    wait that timed out, or a poll that found nothing. Never the key of a payload (``g:``), so
    no payload can pose as an outcome."""
    return f"{OUTCOME}{name}:{index}"


def signal_deadline_key(name: str, index: int) -> str:
    """The key of the deadline of the wait (with a timeout) for receive ``index`` of ``name``."""
    return f"{DEADLINE}{name}:{index}"


def legacy_journal_key(name: str) -> str:
    """The key of a step imported from a jeevesagent 0.9.7 journal (keyed by name alone)."""
    return f"{LEGACY}{name}"


def timer_journal_key(name: str) -> str:
    return f"{TIMER}{name}"


def chunks_journal_key(stream_key: str, offset: int) -> str:
    """The key of the batch of chunks of stream step ``stream_key`` whose first chunk is chunk
    number ``offset`` of the stream (from 0)."""
    return f"{CHUNKS}{stream_key}:{offset}"


def chunks_prefix(stream_key: str) -> str:
    """What every chunk-batch key of stream step ``stream_key`` starts with."""
    return f"{CHUNKS}{stream_key}:"


def is_chunks_key(key: str) -> bool:
    """A batch of a running stream step's chunks (``c:``)."""
    return key.startswith(CHUNKS)


def split_chunks_key(key: str) -> tuple[str, int] | None:
    """``(stream key, offset)`` of a chunk-batch key, else ``None``."""
    if not key.startswith(CHUNKS):
        return None
    stream_key, _, offset = key[2:].rpartition(":")
    if not offset.isdigit():
        return None
    return stream_key, int(offset)


def is_signal_receipt(key: str) -> bool:
    """A received signal's payload (``g:``)."""
    return key.startswith(SIGNAL)


def is_signal_key(key: str) -> bool:
    """A receive of a signal, with its payload (``g:``) or without one (``o:``)."""
    return key.startswith((SIGNAL, OUTCOME))


def is_timer_key(key: str) -> bool:
    """The wake-up time of a durable ``sleep`` (``t:``)."""
    return key.startswith(TIMER)


def receipt_signal_name(key: str) -> str:
    """The signal name in a ``g:<name>:<n>`` (or ``o:``) key."""
    return key[2:].rpartition(":")[0]


def is_legacy_key(key: str) -> bool:
    """A step imported from a jeevesagent 0.9.7 journal (``l:``)."""
    return key.startswith(LEGACY)


def split_step_key(key: str) -> tuple[str, str] | None:
    """``(name, fingerprint)`` of a plain step's key (``s:``), else ``None``."""
    if not key.startswith(STEP):
        return None
    return key[2 : -FINGERPRINT_CHARS - 1], key[-FINGERPRINT_CHARS:]


_HEX = frozenset("0123456789abcdef")


def workflow_args_key() -> str:
    """The key of a workflow session's arguments (its workflow's ``(fingerprint, args,
    kwargs)``)."""
    return f"{WORKFLOW}args"


def workflow_result_key() -> str:
    """The key of a workflow session's outcome: its body's return value, or the failure it
    raised (a ``JournaledFailure``)."""
    return f"{WORKFLOW}result"


def workflow_failure_key(n: int) -> str:
    """The key of the exception of a workflow session's ``n``-th failed run (from 0)."""
    return f"{WORKFLOW}failure:{n}"


def failure_index(key: str) -> int | None:
    """``n`` of a :func:`workflow_failure_key`, else ``None``."""
    prefix = f"{WORKFLOW}failure:"
    if not key.startswith(prefix) or not key[len(prefix) :].isdigit():
        return None
    return int(key[len(prefix) :])


def is_workflow_key(key: str) -> bool:
    """A workflow session's arguments or outcome (``w:``): not a step."""
    return key.startswith(WORKFLOW)


def step_name_of(key: str) -> str | None:
    """The step name in a plain step's key (``s:name:fingerprint``), else ``None``."""
    step = split_step_key(key)
    return None if step is None else step[0]


def describe_key(key: str) -> str:
    """A readable form of a journal key for messages, listings and errors' ``step``: the step's
    name, ``idempotency_key='K'``, ``signal 'name' #n``, ``sleep 'name'``; any other text (a name
    already, or a key of a third-party store) as is."""
    prefix, rest = key[:2], key[2:]
    if prefix == STEP:
        name, sep, fp = rest.rpartition(":")
        if sep and len(fp) == FINGERPRINT_CHARS and _HEX.issuperset(fp):
            return name
        return key
    if prefix == IDEMPOTENCY:
        return f"idempotency_key={rest!r}"
    if prefix == SIGNAL:
        name, _, idx = rest.rpartition(":")
        return f"signal {name!r} #{idx}"
    if prefix == OUTCOME:
        name, _, idx = rest.rpartition(":")
        return f"signal {name!r} #{idx} (no payload)"
    if prefix == TIMER:
        return f"sleep {rest!r}"
    if prefix == DEADLINE:
        name, _, idx = rest.rpartition(":")
        return f"signal {name!r} #{idx} (deadline)"
    if prefix == LEGACY:
        return rest
    if prefix == CHUNKS:
        chunks = split_chunks_key(key)
        if chunks is not None:
            return f"{describe_key(chunks[0])} chunks from #{chunks[1]}"
        return key
    if prefix == WORKFLOW:
        return f"workflow {rest}"
    return key

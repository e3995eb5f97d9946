"""Value codec and step identity (journal keys and argument fingerprints).

Journal keys live in three namespaces, told apart by their first two characters, so a key of one
kind can never equal a key of another:

* ``s:<name>:<fingerprint>`` -- a plain step (or stream step) identified by name and arguments;
* ``k:<idempotency key>`` -- a step called with ``idempotency_key=``;
* ``g:<signal name>:<n>`` -- the n-th signal of that name received by the session;
* ``t:<name>`` -- the wake-up time of a durable ``sleep``;
* ``l:<name>`` -- a step imported from a jeevesagent 0.9.7 journal, which keyed steps by name
  alone: a step of that name whose own key is not journaled replays it.

The fingerprint is a fixed-length hex digest at the end of the key, so two different names can
never produce the same key either.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import pathlib
import struct
import uuid
from collections.abc import Mapping
from typing import Any

from ._errors import ValueEncodingError
from ._values import JournalCodec, PickleCodec, decode_value, encode_value

__all__ = [
    "JournalCodec",
    "PickleCodec",
    "decode_value",
    "encode_value",
    "fingerprint",
    "idempotency_journal_key",
    "signal_journal_key",
    "step_journal_key",
]

FINGERPRINT_CHARS = 24


def _type_name(value: Any) -> str:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


# -- fingerprints ---------------------------------------------------------------------------------
#
# A canonical, type-tagged byte encoding of the arguments, hashed with BLAKE2b. Equal values give
# equal bytes in every process: dicts and sets are sorted by the encoding of their members, never
# by Python's salted hash(); tuples and lists carry different tags; dataclasses and pydantic models
# are encoded by class name and field values; functions and classes by their qualified name. Any
# other object is encoded by what pickle would save of it (its __reduce_ex__ tuple), canonically. An
# object that cannot be pickled either raises ValueEncodingError telling the caller to pass
# idempotency_key=.


class _Unfingerprintable(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__(_type_name(value))
        self.value = value


def _enc(value: Any, out: bytearray) -> None:
    t = type(value)
    if t is str:
        b = value.encode("utf-8", "surrogatepass")
        out += b"s" + struct.pack(">I", len(b)) + b
    elif value is None:
        out += b"N"
    elif t is bool:
        out += b"T" if value else b"F"
    elif t is int:
        b = str(value).encode()
        out += b"i" + struct.pack(">I", len(b)) + b
    elif t is float:
        out += b"f" + struct.pack(">d", value)
    elif t is bytes or t is bytearray:
        out += (b"b" if t is bytes else b"y") + struct.pack(">I", len(value)) + bytes(value)
    elif t is dict:
        _enc_mapping(value, out, b"d")
    elif t is list:
        out += b"l" + struct.pack(">I", len(value))
        for v in value:
            _enc(v, out)
    elif t is tuple:
        out += b"t" + struct.pack(">I", len(value))
        for v in value:
            _enc(v, out)
    elif t is set or t is frozenset:
        parts = sorted(_enc_one(v) for v in value)
        out += (b"e" if t is set else b"z") + struct.pack(">I", len(parts))
        for p in parts:
            out += p
    else:
        _enc_other(value, out)


def _enc_one(value: Any) -> bytes:
    buf = bytearray()
    _enc(value, buf)
    return bytes(buf)


def _enc_mapping(value: Mapping[Any, Any], out: bytearray, tag: bytes) -> None:
    items = sorted((_enc_one(k), _enc_one(v)) for k, v in value.items())
    out += tag + struct.pack(">I", len(items))
    for k, v in items:
        out += k + v


def _qualname(t: Any) -> bytes:
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', repr(t))}".encode()


_REPR_TYPES = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    pathlib.PurePath,
    complex,
)


def _enc_other(value: Any, out: bytearray) -> None:
    t = type(value)
    if isinstance(value, enum.Enum):
        out += b"E" + _qualname(t) + b"\0"
        _enc(value.value, out)
    elif isinstance(value, (str, int, float, bytes)):  # subclasses of builtins (not enums)
        base: type = next(b for b in (str, int, float, bytes) if isinstance(value, b))
        out += b"S" + _qualname(t) + b"\0"
        _enc(base(value), out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out += b"D" + _qualname(t) + b"\0"
        _enc_mapping({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out, b"d")
    elif hasattr(value, "model_dump") and hasattr(t, "model_fields"):  # pydantic v2
        out += b"P" + _qualname(t) + b"\0"
        _enc(value.model_dump(mode="python"), out)
    elif isinstance(value, Mapping):
        out += b"M" + _qualname(t) + b"\0"
        _enc_mapping(value, out, b"d")
    elif isinstance(value, (list, tuple)):  # named tuples, list subclasses
        out += b"L" + _qualname(t) + b"\0"
        _enc(list(value), out)
    elif isinstance(value, _REPR_TYPES):
        b = repr(value).encode()
        out += b"R" + _qualname(t) + b"\0" + struct.pack(">I", len(b)) + b
    elif isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        # Functions and classes are identified by where they are defined, not by identity.
        out += b"C" + _qualname(value) + b"\0"
    else:
        # Any other object: encode what pickle would save (its reduce tuple: constructor, args,
        # state), canonically, so a set or dict inside its state is sorted like any other.
        try:
            reduced = value.__reduce_ex__(4)
        except Exception as exc:
            raise _Unfingerprintable(value) from exc
        out += b"X" + _qualname(t) + b"\0"
        if isinstance(reduced, str):
            _enc(reduced, out)
            return
        parts = list(reduced[:3])
        if len(reduced) > 3 and reduced[3] is not None:
            parts.append(list(reduced[3]))
        if len(reduced) > 4 and reduced[4] is not None:
            parts.append(dict(reduced[4]))
        _enc(tuple(parts), out)


class _NotPlain(Exception):
    pass


def _plain(value: Any, out: list[str]) -> None:
    """Canonical text of plain data (str, int, float, bool, None, bytes, list, tuple, dict), in
    which every value's text says where it ends. Raises _NotPlain for anything else.

    Strings and ints -- most leaves -- are handled inline by their container: this runs on every
    step call, replays included, so a function call per leaf matters.
    """
    t = type(value)
    if t is dict:
        out.append("{")
        try:
            keys = sorted(value)  # str keys (the usual case) sort the same in every process
        except TypeError:
            keys = None
        if keys is not None:
            for k in keys:
                if type(k) is not str:
                    break
            else:
                for k in keys:
                    out.append(repr(k))
                    v = value[k]
                    tv = type(v)
                    if tv is str:
                        out.append(repr(v))
                    elif tv is int:
                        out.append(f"i{v};")
                    else:
                        _plain(v, out)
                out.append("}")
                return
        items = []
        for k, v in value.items():
            kp: list[str] = []
            _plain(k, kp)
            items.append(("".join(kp), v))
        items.sort(key=_first)
        for k, v in items:
            out.append(k)
            _plain(v, out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[" if t is list else "(")
        for v in value:
            tv = type(v)
            if tv is str:
                out.append(repr(v))
            elif tv is int:
                out.append(f"i{v};")
            else:
                _plain(v, out)
        out.append("]" if t is list else ")")
    elif t is str:
        out.append(repr(value))  # starts with a quote; escapes make it unambiguous
    elif t is int:
        out.append(f"i{value};")
    elif t is float:
        out.append(f"f{value!r};")
    elif value is None:
        out.append("N")
    elif t is bool:
        out.append("T" if value else "F")
    elif t is bytes:
        out.append(repr(value))  # b'...'
    else:
        raise _NotPlain


def _first(kv: tuple[str, Any]) -> str:
    return kv[0]


def fingerprint(
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    session_id: str | None = None,
    step: str = "?",
) -> str:
    """A stable hex digest of ``args``/``kwargs`` (equal values => equal digest, in any process)."""
    if not args and not kwargs:
        return _EMPTY
    # Fast path for the common case (plain data): a canonical text in one pass, no allocation
    # per value beyond repr(). Tagged "P" so it can never equal the general encoding below.
    parts = ["P"]
    try:
        _plain(args, parts)
        if kwargs:
            _plain(kwargs, parts)
    except _NotPlain:
        pass
    except RecursionError:
        pass  # reported by the general encoder below
    else:
        text = "".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(text, digest_size=FINGERPRINT_CHARS // 2).hexdigest()
    buf = bytearray()
    try:
        _enc(args, buf)
        _enc_mapping(kwargs, buf, b"d")
    except RecursionError:
        raise ValueEncodingError(
            f"session {session_id!r}, step {step!r}: the arguments are nested too deeply or refer "
            "to themselves, so they cannot be fingerprinted. Pass idempotency_key=... to name "
            "the call explicitly.",
            session_id=session_id,
            step=step,
        ) from None
    except _Unfingerprintable as exc:
        raise ValueEncodingError(
            f"session {session_id!r}, step {step!r}: an argument of type {exc} cannot be "
            "fingerprinted (it is neither plain data, a dataclass, a pydantic model nor "
            "picklable), so the step cannot be identified across runs. Pass "
            "idempotency_key=... to name the call explicitly, or pass the object through a "
            "closure (functools.partial) instead of as an argument.",
            session_id=session_id,
            step=step,
        ) from exc.__cause__
    return hashlib.blake2b(buf, digest_size=FINGERPRINT_CHARS // 2).hexdigest()


_EMPTY = hashlib.blake2b(b"", digest_size=FINGERPRINT_CHARS // 2).hexdigest()


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


def legacy_journal_key(name: str) -> str:
    """The key of a step imported from a jeevesagent 0.9.7 journal (keyed by name alone)."""
    return f"l:{name}"


def timer_journal_key(name: str) -> str:
    return f"t:{name}"


def describe_key(key: str) -> str:
    """A readable form of a journal key for messages and listings."""
    if key.startswith("s:"):
        return key[2 : -(FINGERPRINT_CHARS + 1)]
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

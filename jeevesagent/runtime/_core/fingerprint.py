"""Argument fingerprints: the stable digest of a step's arguments that, with its name, makes its
journal key (see ``_codec``). The bytes hashed are part of every journal's keys: an encoding may
only change where it used to give unequal arguments the same digest.
"""

from __future__ import annotations

import copyreg
import dataclasses
import datetime
import decimal
import enum
import hashlib
import pathlib
import struct
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from .._errors import ValueEncodingError

__all__ = ["FINGERPRINT_CHARS", "fingerprint"]

FINGERPRINT_CHARS = 24


def _type_name(value: Any) -> str:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


# -- fingerprints ---------------------------------------------------------------------------------
#
# A canonical, type-tagged byte encoding of the arguments, hashed with BLAKE2b. The same values of
# the same types give the same bytes in every process: dicts and sets are sorted by the encoding of
# their members, never by Python's salted hash(); tuples and lists carry different tags; dataclasses
# and pydantic models are encoded by class name and field values; functions and classes by their
# qualified name. Any other object is encoded by what pickle would save of it (its __reduce_ex__
# tuple, or its copyreg reducer), canonically. An object that cannot be pickled either raises
# ValueEncodingError telling the caller to pass idempotency_key=.
#
# The type and the exact value are part of the identity, not just ==: 1, 1.0 and True differ, so
# do 0.0 and -0.0, and Decimal("1.0") and Decimal("1.00"). Journal keys of existing journals depend
# on these bytes: a change may only touch encodings that used to collide (see _enc_model).


class _Unfingerprintable(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__(_type_name(value))
        self.value = value


# Ints of up to 4,300 digits (Python's default int-to-str limit) are encoded by their decimal text,
# as they always were; longer ones by their hex text (linear time, no limit), whatever the limit of
# the process (sys.set_int_max_str_digits) -- so a key never depends on it.
_DECIMAL_DIGITS = 4300
_DECIMAL_BOUND = 10**_DECIMAL_DIGITS


def _decimal(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # the process's limit is below 4,300 digits; decimal has none
        return str(decimal.Decimal(value))


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
        if -_DECIMAL_BOUND < value < _DECIMAL_BOUND:
            b = _decimal(value).encode()
            out += b"i" + struct.pack(">I", len(b)) + b
        else:
            b = format(value, "x").encode()
            out += b"I" + struct.pack(">I", len(b)) + b
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
        _enc_model(value, out)
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
            # What pickle itself would use for types without a working __reduce_ex__ (re.Pattern,
            # int | str). Tried second, so the key of an object that had one never changes.
            reducer = copyreg.dispatch_table.get(t)
            if reducer is None:
                raise _Unfingerprintable(value) from exc
            try:
                reduced = reducer(value)
            except Exception:
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


def _enc_model(value: Any, out: bytearray) -> None:
    """A pydantic model: ``P`` + class + its ``model_dump()``, as keys always were -- when that
    dump says everything about the model. It does not when an ``exclude=True`` field is left out,
    or when a nested model or dataclass became a dict that does not say its class (a subclass, a
    field typed ``Any``, a union), or lost a subclass's fields: such a model is encoded by its
    class and every field (``Q``), so unequal models never share a key."""
    dumped = value.model_dump(mode="python")
    full = _unless_faithful(value, dumped)
    if full is not None:
        out += full
        return
    out += b"P" + _qualname(type(value)) + b"\0"
    _enc(dumped, out)


def _unless_faithful(value: Any, dumped: Any) -> bytes | None:
    """The ``Q`` encoding of a model whose dump loses some of its identity, ``None`` if the dump
    says it all: nothing excluded and no nested model or dataclass, or validating the dump gives
    back the same model (then no other model has that dump: its key stays what it was)."""
    t = type(value)
    identity, excluded = _identity(value)
    if not excluded and not _holds_objects(list(identity.values())):
        return None
    try:
        try:
            back = t.model_validate(dumped, strict=False, by_name=True)
        except TypeError:  # pydantic < 2.11 has no by_name=: validate the dump by alias
            by_alias = value.model_dump(mode="python", by_alias=True)
            back = t.model_validate(by_alias, strict=False)
        if type(back) is t and _same(value, back):
            return None
    except Exception:  # the dump does not validate back (a validator refused it)
        pass
    buf = bytearray(b"Q" + _qualname(t) + b"\0")
    try:
        _enc_mapping(identity, buf, b"d")
    except _Unfingerprintable:
        return None  # a field the dump serializes, and we cannot: identify it by its dump
    return bytes(buf)


def _identity(value: Any) -> tuple[dict[str, Any], bool]:
    """A model's identity: its fields and extras -- except an excluded field whose value cannot
    be fingerprinted (a client kept out of the dump), which counts as its default, as before.
    And whether it keeps an excluded field (one the dump leaves out)."""
    identity: dict[str, Any] = {}
    excluded = False
    for name, info in type(value).model_fields.items():
        v = getattr(value, name)
        if info.exclude or getattr(info, "exclude_if", None) is not None:
            try:
                _enc(v, bytearray())
            except _Unfingerprintable:
                continue
            excluded = True
        identity[name] = v
    extra = getattr(value, "__pydantic_extra__", None)
    if extra:
        identity.update(extra)
    return identity, excluded


def _same(a: Any, b: Any) -> bool:
    """Whether ``b`` (a model validated from ``a``'s dump) is ``a`` again: the same classes all
    the way down and equal identities. What the dump keeps (ints vs floats, decimals' digits) is
    in the dump's own encoding; this only has to see what it may lose."""
    if a is b:
        return True
    t = type(a)
    if type(b) is not t:
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(t, "model_fields") and hasattr(a, "model_dump"):
        extra_a = getattr(a, "__pydantic_extra__", None) or {}
        extra_b = getattr(b, "__pydantic_extra__", None) or {}
        return extra_a.keys() == extra_b.keys() and all(
            _same(v, extra_b[n] if n in extra_b else getattr(b, n))
            for n, v in _identity(a)[0].items()
        )
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    try:
        return bool(a == b) or (a != a and b != b)  # NaN is not equal to itself
    except Exception:
        return False


_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def _holds_objects(stack: list[Any]) -> bool:
    """Whether the values in ``stack`` hold a pydantic model or dataclass (which ``model_dump``
    turns into a dict), looking through dicts, lists, tuples and sets. Consumes ``stack``."""
    while stack:
        v = stack.pop()
        if type(v) in _LEAVES:
            continue
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif (dataclasses.is_dataclass(v) and not isinstance(v, type)) or (
            hasattr(v, "model_dump") and hasattr(type(v), "model_fields")
        ):
            return True
    return False


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


def _int_token(value: int) -> str:
    if -_DECIMAL_BOUND < value < _DECIMAL_BOUND:
        return f"i{_decimal(value)};"
    return f"I{value:x};"


def _plain_big(value: Any, out: list[str]) -> None:
    """The text of :func:`_plain`, for plain data that holds an int longer than this process's
    int-to-str limit or than 4,300 digits: the same text for every shorter int."""
    t = type(value)
    if t is dict:
        out.append("{")
        if all(type(k) is str for k in value):
            for k in sorted(value):
                out.append(repr(k))
                _plain_big(value[k], out)
        else:
            items = []
            for k, v in value.items():
                kp: list[str] = []
                _plain_big(k, kp)
                items.append(("".join(kp), v))
            items.sort(key=_first)
            for k, v in items:
                out.append(k)
                _plain_big(v, out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[" if t is list else "(")
        for v in value:
            _plain_big(v, out)
        out.append("]" if t is list else ")")
    elif t is int:
        out.append(_int_token(value))
    else:
        _plain(value, out)


def _plain_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    parts = ["P"]
    try:
        _plain(args, parts)
        if kwargs:
            _plain(kwargs, parts)
        # A process without the default limit writes longer ints in decimal: find them.
        limit = sys.get_int_max_str_digits()
        again = (limit == 0 or limit > _DECIMAL_DIGITS) and any(
            len(p) > _DECIMAL_DIGITS + 2 for p in parts
        )
    except ValueError:  # an int over this process's int-to-str limit
        again = True
    if again:
        parts = ["P"]
        _plain_big(args, parts)
        if kwargs:
            _plain_big(kwargs, parts)
    return "".join(parts).encode("utf-8", "surrogatepass")


def fingerprint(
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    session_id: str | None = None,
    step: str = "?",
) -> str:
    """A stable hex digest of ``args``/``kwargs``: the same values of the same types give the same
    digest in any process (``1``, ``1.0`` and ``True`` are different arguments)."""
    if not args and not kwargs:
        return _EMPTY
    # Fast path for the common case (plain data): a canonical text in one pass, no allocation
    # per value beyond repr(). Tagged "P" so it can never equal the general encoding below.
    try:
        text = _plain_text(args, kwargs)
    except _NotPlain:
        pass
    except RecursionError:
        pass  # reported by the general encoder below
    else:
        return hashlib.blake2b(text, digest_size=FINGERPRINT_CHARS // 2).hexdigest()
    buf = bytearray()
    try:
        _enc(args, buf)
        _enc_mapping(kwargs, buf, b"d")
    except RecursionError:
        where = _failing_argument(args, kwargs)
        raise ValueEncodingError(
            f"session {session_id!r}, step {step!r}: the argument {where} is nested too deeply "
            "or refers to itself, so it cannot be fingerprinted. Pass idempotency_key=... to "
            "name the call explicitly.",
            session_id=session_id,
            step=step,
        ) from None
    except _Unfingerprintable as exc:
        path = _find_in_arguments(args, kwargs, exc.value)
        where = (
            f"the argument {path} is of type {exc}"
            if path is not None
            else f"the argument {_failing_argument(args, kwargs)} holds an object of type {exc}"
        )
        raise ValueEncodingError(
            f"session {session_id!r}, step {step!r}: {where}, which cannot be fingerprinted (it "
            "is neither plain data, a dataclass, a pydantic model nor picklable), so the step "
            "cannot be identified across runs. Pass idempotency_key=... to name the call "
            "explicitly, or pass the object through a closure (functools.partial) instead of as "
            "an argument.",
            session_id=session_id,
            step=step,
        ) from exc.__cause__
    return hashlib.blake2b(buf, digest_size=FINGERPRINT_CHARS // 2).hexdigest()


# -- which argument failed (error path only) ------------------------------------------------------


def _arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(f"args[{i}]", a) for i, a in enumerate(args)] + [
        (f"kwargs[{k!r}]", v) for k, v in kwargs.items()
    ]


def _failing_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    for path, value in _arguments(args, kwargs):
        try:
            _enc(value, bytearray())
        except (_Unfingerprintable, RecursionError):
            return path
    return "?"


def _find_in_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any], target: Any) -> str | None:
    """The path of ``target`` in the arguments (``args[1]['ctx']``), looking through containers,
    dataclass and model fields and object attributes; ``None`` if it is deeper than that."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = list(reversed(_arguments(args, kwargs)))
    while stack:
        path, value = stack.pop()
        if value is target:
            return path
        if id(value) in seen or len(path) > 500:
            continue
        seen.add(id(value))
        children: list[tuple[str, Any]] = []
        if isinstance(value, Mapping):
            for k, v in value.items():
                children.append((f"{path}[{k!r}]", v))
                children.append((f"a key of {path}", k))
        elif isinstance(value, (list, tuple)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, (set, frozenset)):
            children = [(f"a member of {path}", v) for v in value]
        elif hasattr(type(value), "model_fields"):
            children = [(f"{path}.{n}", getattr(value, n, None)) for n in type(value).model_fields]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            children = [
                (f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)
            ]
        elif isinstance(getattr(value, "__dict__", None), dict):
            children = [(f"{path}.{n}", v) for n, v in vars(value).items()]
        stack.extend(reversed(children))
    return None


_EMPTY = hashlib.blake2b(b"", digest_size=FINGERPRINT_CHARS // 2).hexdigest()

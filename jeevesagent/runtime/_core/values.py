"""How values are stored: the codecs (pickle, JSON) and the optional signature of every row.

Row format (the ``value`` column of ``jrt_journal`` and the ``payload`` column of ``jrt_mailbox``):

* **pickle** -- the raw pickle, as jeevesagent 0.9.7 stored it (protocol 2 or later, so the first
  byte is ``0x80``);
* **JSON** -- the raw UTF-8 JSON text (never starts with ``0x80``), readable by any tool;
* **signed** -- ``b"\\x00jrt1"`` + a 32-byte tag + one of the two above. The tag is keyed BLAKE2b
  over the session id, what the row is (its kind and journal key, or the name of the signal it
  carries) and the payload, so a signed row can be neither forged, altered, nor moved to another
  session or step without the key.

A store with a signing key writes only signed rows and refuses, before decoding anything, every
row whose tag does not verify (unsigned, signed with another key, altered, or moved). A store
without a key refuses signed rows too -- a missing key is a configuration mistake, and writing
unsigned rows into a signed journal would only make its signed readers refuse them later.

The JSON codec never unpickles: a pickle row in a JSON journal is refused. The pickle codec also
reads JSON rows (the CLI writes signals as JSON, whatever the journal's codec).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import pickletools
from typing import Any, Literal, NamedTuple, Protocol

from .._errors import JournalCorruptError, JournalIntegrityError, ValueEncodingError
from .keys import describe_key, is_signal_receipt, receipt_signal_name

__all__ = [
    "SIGNING_KEY_ENV",
    "Codec",
    "JournalCodec",
    "JsonCodec",
    "PickleCodec",
    "Peek",
    "decode_value",
    "encode_value",
    "peek",
    "row_context",
    "row_signature",
    "signal_context",
]

SIGNING_KEY_ENV = "JEEVESAGENT_SIGNING_KEY"
MAGIC = b"\x00jrt1"
TAG_BYTES = 32
_HEADER = len(MAGIC) + TAG_BYTES
_PICKLE_FIRST = 0x80  # PROTO opcode: every pickle of protocol 2 or later starts with it


class Codec(Protocol):
    """Turns values into bytes and back. ``name`` is shown in errors and by the CLI."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class PickleCodec:
    """The default codec: :mod:`pickle` (highest protocol), as the published version stored.
    Round-trips anything picklable: pydantic models, dataclasses, exceptions."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        if data[:1] != b"\x80":
            return _unescape(json.loads(data))  # a JSON row (a signal sent by the CLI)
        return pickle.loads(data)


# A journaled failure in a JSON row is {_FAILURE: {"type": ..., "message": ...}}, as it always was.
# Data of that shape (a dict whose only key is _FAILURE) is written {_FAILURE: {_DATA: <its value>}}
# -- never a failure's shape -- so a step result can never replay as a failure. (A pickle row needs
# no marker: a failure is a JournaledFailure object, which no step result becomes by accident.)
_FAILURE = "__jeevesagent_failure__"
_DATA = "data"


def _unescape(value: Any) -> Any:
    if type(value) is dict and len(value) == 1 and _FAILURE in value:
        inner = value[_FAILURE]
        if type(inner) is dict and len(inner) == 1 and _DATA in inner:
            return {_FAILURE: inner[_DATA]}
    return value


def _check_json_keys(value: Any) -> None:
    """Refuse dict keys that are not strings: JSON would turn them into strings silently
    (``{1: "a", "1": "b"}`` would come back as ``{"1": "b"}``)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        v, path = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise TypeError(_bad_key(k, "value" + "".join(f"[{p!r}]" for p in path)))
                if isinstance(item, (dict, list, tuple)):
                    stack.append((item, (*path, k)))
        elif isinstance(v, (list, tuple)):
            stack.extend(
                (item, (*path, i))
                for i, item in enumerate(v)
                if isinstance(item, (dict, list, tuple))
            )


def _bad_key(key: Any, where: str) -> str:
    try:
        coerced = json.dumps(next(iter(json.loads(json.dumps({key: None})))))
        fate = f", so it would come back as the string {coerced}"
    except (TypeError, ValueError):
        fate = ""
    return (
        f"{where} has the key {key!r} of type {type(key).__qualname__}; JSON object keys are "
        f"strings{fate}. Use string keys, or a list of pairs"
    )


class JsonCodec:
    """Plain JSON (UTF-8, no NaN/Infinity), for journals other tools must read.

    Values must be JSON data: dicts with string keys, lists, strings, numbers, booleans, ``None``.
    Tuples come back as lists, and subclasses of str, int and float (``StrEnum``, ``IntEnum``)
    as the plain type. Anything else (a pydantic model, a dataclass, a dict with an int key)
    raises ``ValueEncodingError``: return ``model.model_dump(mode="json")`` from the step
    instead. A journaled failure is stored as
    ``{"__jeevesagent_failure__": {"type": ..., "message": ...}}`` and replays as
    ``StepFailedError``; a result that is a dict whose only key is ``"__jeevesagent_failure__"`` is
    stored as ``{"__jeevesagent_failure__": {"data": <its value>}}`` and replays as itself.
    """

    name = "json"

    def encode(self, value: Any) -> bytes:
        from .._policy import JournaledFailure

        if type(value) is JournaledFailure:
            value = {_FAILURE: {"type": value.type_name, "message": value.message}}
        else:
            _check_json_keys(value)
            if isinstance(value, dict) and len(value) == 1 and _FAILURE in value:
                value = {_FAILURE: {_DATA: value[_FAILURE]}}
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()

    def decode(self, data: bytes) -> Any:
        if data[:1] == b"\x80":
            raise ValueError("the row is a pickle, and the JSON codec never unpickles")
        value = json.loads(data)
        if type(value) is dict and len(value) == 1 and _FAILURE in value:
            data_value = _unescape(value)
            if data_value is not value:
                return data_value  # a result that looks like the marker, written escaped
            from .._policy import JournaledFailure

            failure = value[_FAILURE]
            return JournaledFailure(str(failure.get("type")), str(failure.get("message")), None)
        return value


def _make_codec(codec: str | Codec | None) -> Codec:
    if codec is None or codec == "pickle":
        return PickleCodec()
    if codec == "json":
        return JsonCodec()
    if isinstance(codec, str):
        raise ValueError(f"unknown codec {codec!r}: use 'pickle', 'json' or a codec object")
    return codec


def _make_key(signing_key: str | bytes | None) -> bytes | None:
    if signing_key is None:
        signing_key = os.environ.get(SIGNING_KEY_ENV) or None
        if signing_key is None:
            return None
    if not signing_key:
        return None  # "" or b"": explicitly unsigned, whatever the environment says
    raw = signing_key.encode() if isinstance(signing_key, str) else bytes(signing_key)
    if len(raw) < 16:
        raise ValueError(
            "the signing key is shorter than 16 bytes; use a long random secret "
            '(python -c "import secrets; print(secrets.token_hex(32))")'
        )
    # BLAKE2b takes keys of up to 64 bytes; derive one from longer secrets.
    return raw if len(raw) <= 64 else hashlib.blake2b(raw, person=b"jrt-key").digest()


def row_context(kind: int, key: str) -> str:
    """What a journal row is, as bound into its signature. A signal's receipt (``g:`` key) is
    bound to the signal's name, since the row is the mailbox payload moved as is."""
    if kind == 0 and is_signal_receipt(key):
        return signal_context(receipt_signal_name(key))
    return f"{kind}:{key}"


def signal_context(name: str) -> str:
    return f"signal:{name}"


# A signed signal: NONCE_MARK, NONCE_BYTES random bytes, then the row signed with the nonce in its
# context (see _jsignals), so every send is unique and a copy is recognized by its signature.
NONCE_MARK = b"\x00jrn1"
NONCE_BYTES = 16


def split_nonce(data: bytes, context: str) -> tuple[bytes, str]:
    """A signal row without its nonce, and the signature context that binds the nonce."""
    if data[: len(NONCE_MARK)] != NONCE_MARK:
        return data, context
    start = len(NONCE_MARK) + NONCE_BYTES
    return data[start:], f"{context}#{data[len(NONCE_MARK) : start].hex()}"


class JournalCodec:
    """A codec plus the optional signing key: what a store uses to write and read rows.

    :param codec: ``"pickle"`` (default), ``"json"``, or an object with ``name``, ``encode`` and
        ``decode``.
    :param signing_key: bytes or str (at least 16 bytes); ``None`` reads the environment
        variable ``JEEVESAGENT_SIGNING_KEY`` (unset: rows are not signed); ``""`` means no key,
        whatever the environment says.
    """

    __slots__ = ("_key", "codec", "name", "plain_pickle")

    def __init__(
        self, codec: str | Codec | None = None, signing_key: str | bytes | None = None
    ) -> None:
        self.codec = _make_codec(codec)
        self.name: str = self.codec.name
        self._key = _make_key(signing_key)
        # The common case, served without building the signature context: unsigned pickle.
        self.plain_pickle = self._key is None and type(self.codec) is PickleCodec

    @property
    def signed(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:
        return f"<JournalCodec {self.name}{' signed' if self._key else ''}>"

    def _tag(self, session_id: str, context: str, payload: bytes) -> bytes:
        assert self._key is not None
        h = hashlib.blake2b(key=self._key, digest_size=TAG_BYTES, person=b"jeevesagent-v1")
        for part in (
            session_id.encode("utf-8", "surrogatepass"),
            context.encode("utf-8", "surrogatepass"),
        ):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        h.update(payload)
        return h.digest()

    def encode(self, value: Any, session_id: str, context: str) -> bytes:
        payload = self.codec.encode(value)
        if self._key is None:
            return payload
        return MAGIC + self._tag(session_id, context, payload) + payload

    def verified_payload(self, data: bytes, session_id: str, context: str) -> bytes:
        """The payload of a row this store may decode; raises ``ValueError`` (with the reason)
        for a row it must refuse. Decodes nothing."""
        signed = data[: len(MAGIC)] == MAGIC
        if self._key is None:
            if signed:
                raise _Refused(
                    "the row is signed, and this store has no signing key: pass signing_key= "
                    f"(or set {SIGNING_KEY_ENV}) to read it"
                )
            return data
        if not signed:
            raise _Refused("the row is not signed, and this store only accepts signed rows")
        tag = data[len(MAGIC) : _HEADER]
        payload = data[_HEADER:]
        if not hmac.compare_digest(tag, self._tag(session_id, context, payload)):
            raise _Refused(
                "the row's signature does not match (signed with another key, altered, or "
                "moved from another session or step)"
            )
        return payload

    def decode(self, data: bytes, session_id: str, context: str) -> Any:
        if self._key is None and data[:1] == b"\x80":
            return self.codec.decode(data)  # the hot path: an unsigned pickle
        return self.codec.decode(self.verified_payload(data, session_id, context))


def row_signature(data: bytes) -> bytes | None:
    """The signature of a signed row (which identifies it), or ``None`` for an unsigned one."""
    return data[len(MAGIC) : _HEADER] if data[: len(MAGIC)] == MAGIC else None


class _Refused(ValueError):
    pass


def encode_value(
    codec: JournalCodec,
    value: Any,
    *,
    session_id: str | None,
    step: str,
    what: str = "result",
    kind: int = 0,
    context: str | None = None,
) -> bytes:
    """Encode ``value`` or raise :class:`ValueEncodingError` naming session, step and type."""
    try:
        if codec.plain_pickle:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return codec.encode(value, session_id or "", context or row_context(kind, step))
    except Exception as exc:
        t = type(value)
        step = _step_name(step)
        raise ValueEncodingError(
            f"session {session_id!r}, step {step!r}: the {what} of type "
            f"{t.__module__}.{t.__qualname__} cannot be encoded with the {codec.name} codec "
            f"({type(exc).__name__}: {exc}). Nothing was recorded. "
            + (
                "Return JSON data (dicts with string keys, lists, strings, numbers) from the "
                "step, e.g. model.model_dump(mode='json')."
                if codec.name == "json"
                else "Return a picklable value (plain data, a dataclass, a pydantic model) "
                "from the step."
            ),
            session_id=session_id,
            step=step,
        ) from exc


def decode_value(
    codec: JournalCodec,
    data: bytes,
    *,
    session_id: str | None,
    step: str,
    kind: int = 0,
    context: str | None = None,
) -> Any:
    """Decode a journal row, or raise :class:`JournalIntegrityError` (refused unread) or
    :class:`JournalCorruptError` (unreadable)."""
    try:
        if codec.plain_pickle and data[:1] == b"\x80":
            return pickle.loads(data)
        return codec.decode(data, session_id or "", context or row_context(kind, step))
    except _Refused as exc:
        step = _step_name(step)
        raise JournalIntegrityError(
            f"session {session_id!r}, step {step!r}: {exc}. The row was refused without being "
            "decoded. If someone else wrote it, remove it (jeevesagent-runtime prune) and find "
            "out how it got there; if the journal predates signing, see docs/guides/security.md.",
            session_id=session_id,
            step=step,
        ) from None
    except Exception as exc:
        step = _step_name(step)
        raise JournalCorruptError(
            f"session {session_id!r}, step {step!r}: the recorded value cannot be decoded with "
            f"the {codec.name} codec ({type(exc).__name__}: {exc}). The row was not used. If the "
            "code that produced it changed (a renamed class), restore it, or remove the row so "
            "the step runs again.",
            session_id=session_id,
            step=step,
        ) from exc


def _step_name(step: str) -> str:
    """How errors name the step: callers pass its journal key (which the signature binds)."""
    return describe_key(step)


# -- previews for the CLI: read a row without running anything --------------------------------


class Peek(NamedTuple):
    """What the CLI may show of a row."""

    format: Literal["pickle", "json", "unknown"]
    signed: bool
    verified: bool  # signed and the tag checked out with the key given
    decoded: bool  # ``value`` holds the decoded value
    value: Any
    note: str  # why it was not decoded, or a summary of a pickle read without running it


def peek(
    data: bytes, codec: JournalCodec, session_id: str, kind: int, key: str, *, trust: bool
) -> Peek:
    """Decode a row for display only when that is safe: JSON always; a pickle only if its
    signature verifies with ``codec``'s key, or if ``trust`` (the caller vouches for the
    database). Otherwise the pickle's opcodes are read -- never executed -- for a summary."""
    data, context = split_nonce(data, row_context(kind, key))
    signed = data[: len(MAGIC)] == MAGIC
    verified = False
    payload = data
    if signed:
        payload = data[_HEADER:]
        if codec.signed:
            try:
                codec.verified_payload(data, session_id, context)
                verified = True
            except _Refused as exc:
                return Peek(_format(payload), True, False, False, None, f"REFUSED: {exc}")
    elif codec.signed:
        return Peek(
            _format(payload), False, False, False, None, "REFUSED: unsigned row in a signed journal"
        )
    fmt = _format(payload)
    if fmt == "json":
        try:
            return Peek(fmt, signed, verified, True, json.loads(payload), "")
        except ValueError as exc:
            return Peek("unknown", signed, verified, False, None, f"not JSON: {exc}")
    if fmt == "pickle" and (verified or trust):
        try:
            return Peek(fmt, signed, verified, True, pickle.loads(payload), "")
        except Exception as exc:
            return Peek(fmt, signed, verified, False, None, f"cannot unpickle: {exc}")
    why = "unsigned" if not signed else "signature not checked (no key)"
    return Peek(
        fmt, signed, verified, False, None, f"not unpickled ({why}); {pickle_summary(payload)}"
    )


def _format(payload: bytes) -> Literal["pickle", "json", "unknown"]:
    if payload[:1] == b"\x80":
        return "pickle"
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "json"


def pickle_summary(payload: bytes, limit: int = 6) -> str:
    """The classes a pickle refers to and its first strings, read from its opcodes without
    executing them (``pickletools.genops`` only parses)."""
    classes: list[str] = []
    strings: list[str] = []
    stack: list[str | None] = []  # what the last opcodes pushed (strings, or None)
    memo: list[str | None] = []
    try:
        for op, arg, _ in pickletools.genops(payload):
            name = op.name
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                qual = arg.replace(" ", ".")
                if qual not in classes:
                    classes.append(qual)
                stack.append(None)
            elif name == "STACK_GLOBAL":
                module, attr = stack[-2:] if len(stack) >= 2 else (None, None)
                if isinstance(module, str) and isinstance(attr, str):
                    qual = f"{module}.{attr}"
                    if qual not in classes:
                        classes.append(qual)
                    strings = [s for s in strings if s not in (module, attr)]
                stack.append(None)
            elif name in ("MEMOIZE", "FRAME", "PROTO"):
                if name == "MEMOIZE":
                    memo.append(stack[-1] if stack else None)
                continue  # pushes nothing
            elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
                stack.append(memo[arg] if 0 <= arg < len(memo) else None)
            elif isinstance(arg, str) and "UNICODE" in name:
                stack.append(arg)
                if len(strings) < limit and arg not in strings:
                    strings.append(arg)
            else:
                stack.append(None)
            del stack[:-2]
    except Exception as exc:
        return f"not a readable pickle ({exc})"
    parts = []
    if classes:
        parts.append("refers to " + ", ".join(classes[:limit]))
    if strings:
        parts.append("strings " + ", ".join(repr(s[:40]) for s in strings[:limit]))
    return "; ".join(parts) or "plain data"

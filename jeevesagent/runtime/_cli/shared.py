"""What the journal commands share: running a command on the journal that ``--db`` (or
``$JEEVESAGENT_DB``) names, with the signing key from the environment (:func:`run_on_store`), and
the output formats (times, aligned tables, JSON, one-line previews).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .._core.values import SIGNING_KEY_ENV, JournalCodec
from .._errors import RuntimeJournalError
from .._journal.backend import JournalBackend
from .target import DB_ENV, CliError, Target, open_store, parse_target

__all__ = [
    "for_json",
    "one_line",
    "print_json",
    "run_on_store",
    "run_on_target",
    "signing_key",
    "table",
    "when",
]


def signing_key(args: argparse.Namespace) -> str:
    """The key from ``--signing-key-env`` (default ``$JEEVESAGENT_SIGNING_KEY``); ``""`` when
    that variable is unset, which tells the store "no key" (it does not fall back to the
    default variable)."""
    name: str = getattr(args, "signing_key_env", SIGNING_KEY_ENV)
    key = os.environ.get(name) or ""
    try:
        JournalCodec(None, key)
    except ValueError as exc:
        raise CliError(f"the signing key in ${name} cannot be used: {exc}") from None
    return key


def run_on_target(
    args: argparse.Namespace,
    command: Callable[[Target], Awaitable[int]],
    backend: str = "asyncio",
) -> int:
    """Run ``command`` on the target that ``--db`` names, in an event loop of ``backend``
    (``asyncio`` or ``trio``), with its errors as ``CliError``s (passwords scrubbed)."""
    target = parse_target(args.db or os.environ.get(DB_ENV))
    try:
        return anyio.run(command, target, backend=backend)
    except CliError as exc:
        exc.message = target.scrub(exc.message)
        raise
    except BrokenPipeError:
        raise  # the reader went away (`... | head`): see main
    except (RuntimeJournalError, OSError, sqlite3.Error) as exc:
        raise CliError(target.scrub(str(exc))) from None


def run_on_store(
    args: argparse.Namespace,
    command: Callable[[JournalBackend, argparse.Namespace], Awaitable[int]],
    codec: str | None = None,
) -> int:
    """Open the journal ``--db`` names (``codec``: how this command writes; reading takes any
    row) and run ``command`` on it."""
    key = args.signing_key = signing_key(args)

    async def go(target: Target) -> int:
        store = await open_store(target, key, codec)
        try:
            return await command(store, args)
        finally:
            await store.aclose()

    return run_on_target(args, go)


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; the last one is not padded (it holds the long previews)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in [headers, *rows]
    )


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=repr))


def for_json(obj: dict[str, Any]) -> dict[str, Any]:
    """A row object whose ``value`` dumps as strict JSON (objects in it dump by ``repr``; a value
    that still cannot, such as one with tuple keys or NaN, becomes its ``repr``)."""
    if "value" not in obj:
        return obj
    try:
        json.dumps(obj["value"], default=repr, allow_nan=False)
    except Exception:
        return {**obj, "value": repr(obj["value"])}
    return obj


def one_line(text: str, limit: int | None) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text

"""The ``tail`` command: follow a session's stream step in the terminal, live, from any
process (the reader of ``JournaledRuntime.read_stream`` over the journal's store).

Chunks are read by the rules of :mod:`~jeevesagent.runtime._cli.outcome`: JSON rows, signed
rows, and unsigned pickles of plain data (str, bytes, numbers, lists...) are read; any other
unsigned pickle only with ``--trust``, since unpickling runs code.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._core.names import check_name, check_session_id
from .._errors import StreamFailedError
from .._journal.backend import STREAM, JournalBackend, Row
from .._journaled.streamread import StreamReader, StreamWatch
from .outcome import read_row
from .target import CliError

__all__ = ["add_stream_commands"]


async def cmd_tail(store: JournalBackend, args: argparse.Namespace) -> int:
    sid, name = args.session, args.name

    def decode(key: str, row: Row) -> Any:
        read = read_row(store.codec, sid, STREAM, key, row, trust=args.trust, allowed=frozenset())
        if not read.ok:
            hint = " (pass --trust if you trust this database)" if read.format == "pickle" else ""
            raise CliError(
                f"session {sid!r}, stream {name!r}: a chunk cannot be read: {read.note}{hint}"
            )
        return read.value

    check_session_id(sid)
    check_name("stream step name", name, sid)
    reader = StreamReader(store, StreamWatch(store), sid, name, args.offset, args.poll, decode)
    try:
        async for chunk in reader:
            _print_chunk(chunk, reader.offset - 1, args.json)
    except StreamFailedError as exc:
        if not args.json:
            print(file=sys.stderr)
        raise CliError(f"{exc} (next offset: {reader.offset})") from None
    if not args.json:
        print()  # the stream's text ends without a newline of its own
    return 0


def _print_chunk(chunk: Any, offset: int, as_json: bool) -> None:
    if as_json:
        try:
            text = json.dumps({"offset": offset, "chunk": chunk}, ensure_ascii=False)
        except (TypeError, ValueError):
            text = json.dumps({"offset": offset, "chunk": repr(chunk)}, ensure_ascii=False)
        print(text, flush=True)
        return
    if isinstance(chunk, bytes):
        chunk = chunk.decode(errors="replace")
    sys.stdout.write(chunk if isinstance(chunk, str) else f"{chunk!r}\n")
    sys.stdout.flush()


def _offset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"an offset is a chunk number >= 0, not {text!r}")
    return value


def add_stream_commands(
    commands: Any, db: argparse.ArgumentParser, key: argparse.ArgumentParser
) -> None:
    """The ``tail`` command, in the subparsers ``commands`` (``db``, ``key``: the parents)."""
    p = commands.add_parser(
        "tail",
        parents=[db, key],
        help="follow a session's stream step, live, until it completes",
        description=(
            "Print the chunks of stream step NAME of SESSION (its latest one of that name) as "
            "they are journaled, until it completes: text chunks as they are, others one repr "
            "a line. Exits 1 if the session ended without completing it. Reconnect with "
            "--offset K (the number of chunks already seen) to get exactly the rest."
        ),
    )
    p.add_argument("session", metavar="SESSION")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--offset", type=_offset, default=0, metavar="K", help="start at chunk K")
    p.add_argument(
        "--poll", type=float, default=0.1, metavar="S", help="seconds between looks (SQLite)"
    )
    p.add_argument("--trust", action="store_true", help="unpickle unsigned chunks (runs code!)")
    p.add_argument("--json", action="store_true", help="one JSON object a chunk (offset, chunk)")
    p.set_defaults(command_fn=cmd_tail)

"""The operations command line: ``jeevesagent-runtime`` / ``python -m jeevesagent.runtime``.

Commands: ``sessions``, ``show``, ``signal``, ``prune``, ``export`` here, the workflow commands
``start``, ``cancel``, ``fork``, ``result`` and ``init-schema`` in
:mod:`~jeevesagent.runtime._cli.workflows` (all on a journal named by ``--db`` or
``$JEEVESAGENT_DB``: a SQLite path or a ``postgres://`` / ``postgresql://`` DSN), and ``demo``;
opening that journal is :mod:`~jeevesagent.runtime._cli.target`'s. Every read goes through public
:class:`JournalBackend` methods (and, for Postgres, ``schema_ready``), so any backend serves it.
Values are shown only through :func:`~jeevesagent.runtime._core.values.peek`, which never
unpickles a row it cannot vouch for (unsigned, unless ``--trust``); what a session waits for is
read as :mod:`~jeevesagent.runtime._cli.outcome` says.

Exit codes: 0 ok, 1 operational error (unknown session, unreachable or invalid database, refused),
2 usage error. Errors are one line on stderr starting with ``error:``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .._core.keys import describe_key, is_legacy_key, is_signal_key, is_timer_key, is_workflow_key
from .._core.values import SIGNING_KEY_ENV, JournalCodec, peek
from .._journal.backend import (
    ENDED_STATUSES,
    SESSION_STATUSES,
    STEP,
    STREAM,
    JournalBackend,
    Row,
    SessionInfo,
    SessionJournal,
)
from .._journaled.signals import seal_signal
from .demo import DEFAULT_PATH
from .outcome import Waiting, describe_waiting, waiting_for
from .shared import for_json, one_line, print_json, run_on_store, table, when
from .streams import add_stream_commands
from .target import DB_ENV, CliError
from .workflows import add_workflow_commands, check_signing, run_init_schema

__all__ = [
    "AddCommands",
    "Sent",
    "build_parser",
    "load_view",
    "main",
    "preview_text",
    "send_signal",
    "session_waiting",
]

PREVIEW_CHARS = 60
NOTE_CHARS = 100  # why a value is not shown (and what a pickle refers to) is worth more room
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)", 2)


# -- rows of a session ---------------------------------------------------------------------------


def row_kind(kind: int, key: str) -> str:
    if kind == STREAM:
        return "legacy-stream" if is_legacy_key(key) else "stream"
    if is_signal_key(key):
        return "signal"
    if is_timer_key(key):
        return "sleep"
    if is_workflow_key(key):
        return "workflow"
    return "legacy" if is_legacy_key(key) else "step"


def row_object(
    session_id: str, kind: int, key: str, row: Row, codec: JournalCodec, trust: bool
) -> dict[str, Any]:
    """One row as ``show --json`` and ``export`` print it (through :func:`~.shared.for_json`);
    ``value`` (as decoded) only when peek decoded it, else ``note``."""
    p = peek(row.data, codec, session_id, kind, key, trust=trust)
    obj: dict[str, Any] = {
        "session_id": session_id,
        "kind": row_kind(kind, key),
        "name": describe_key(key),
        "key": key,
        "created_at": row.created_at,
        "size": len(row.data),
        "format": p.format,
        "signed": p.signed,
        "verified": p.verified,
    }
    if p.decoded:
        obj["value"] = p.value
    else:
        obj["note"] = p.note
    return obj


@dataclass
class SessionView:
    info: SessionInfo | None
    rows: list[dict[str, Any]]
    pending: int
    pending_names: list[str]
    waiting: Waiting | None


async def load_view(store: JournalBackend, session_id: str, trust: bool) -> SessionView:
    """Everything known of a session; ``CliError`` if the journal knows nothing of it."""
    info = await store.session_info(session_id)
    journal = await store.load_session(session_id)
    pending = await store.pending_signals(session_id)
    names = await store.pending_names(session_id) if pending else []
    if info is None and not journal.steps and not journal.streams and not pending:
        raise CliError(f"unknown session {session_id!r}: the journal has nothing of it")
    rows = [(STEP, k, r) for k, r in journal.steps.items()]
    rows += [(STREAM, k, r) for k, r in journal.streams.items()]
    rows.sort(key=lambda x: (x[2].created_at, x[1]))
    objs = [row_object(session_id, kind, k, r, store.codec, trust) for kind, k, r in rows]
    waiting = waiting_for(info, journal, store.codec, trust=trust, now=time.time())
    return SessionView(info, objs, pending, names, waiting)


# -- commands ------------------------------------------------------------------------------------


async def session_waiting(store: JournalBackend, info: SessionInfo, now: float) -> Waiting | None:
    """What a listed session waits for (its journal is read only when it is open and running)."""
    if info.status in (*ENDED_STATUSES, "pending"):
        return waiting_for(info, SessionJournal({}, {}), store.codec, trust=False, now=now)
    journal = await store.load_session(info.session_id)
    return waiting_for(info, journal, store.codec, trust=False, now=now)


async def cmd_sessions(store: JournalBackend, args: argparse.Namespace) -> int:
    infos = await store.list_sessions(args.status, workflows=args.workflow)
    now = time.time()
    waits = [await session_waiting(store, i, now) for i in infos]
    if args.json:
        print_json(
            [
                {**i._asdict(), "waiting_for": w.as_json() if w else None}
                for i, w in zip(infos, waits, strict=True)
            ]
        )
        return 0
    if not infos:
        print("no sessions" + (f" with status {args.status!r}" if args.status else ""))
        return 0
    rows = []
    for i, w in zip(infos, waits, strict=True):
        lease = when(i.lease_expires)
        if i.lease_expires is not None and i.lease_expires < now:
            lease += " (expired)"
        rows.append(
            [
                *(i.session_id, i.status, i.workflow or "-", i.owner or "-", str(i.steps)),
                *(when(i.updated_at), lease, describe_waiting(w, when) if w else "-"),
            ]
        )
    headers = [
        *("SESSION", "STATUS", "WORKFLOW", "OWNER", "STEPS"),
        *("LAST ACTIVITY", "LEASE EXPIRES", "WAITING FOR"),
    ]
    print(table(headers, rows))
    return 0


def preview_text(obj: dict[str, Any], full: bool) -> str:
    """A value as JSON text (JSON rows) or its ``repr`` (unpickled rows); else peek's note."""
    if "value" not in obj:
        text = f"{obj['format']}, {obj['note']}"
        return one_line(text, None if full else NOTE_CHARS)
    value = obj["value"]
    text = json.dumps(value, ensure_ascii=False) if obj["format"] == "json" else repr(value)
    return one_line(text, None if full else PREVIEW_CHARS)


def _session_line(session_id: str, view: SessionView) -> str:
    info = view.info
    if info is None:
        head = f"session {session_id!r}: not in the sessions table (never claimed)"
    else:
        owner = f"owned by {info.owner} until {when(info.lease_expires)}" if info.owner else ""
        workflow = f"workflow {info.workflow!r}, " if info.workflow else ""
        cancel = "cancel requested, " if info.cancel_requested else ""
        head = (
            f"session {session_id!r}: {info.status}, {workflow}{cancel}{owner or 'no owner'}, "
            f"last activity {when(info.updated_at)}"
        )
    pending = f"{view.pending} ({', '.join(view.pending_names)})" if view.pending else "none"
    if view.waiting is not None:
        pending += f"\nwaiting for: {describe_waiting(view.waiting, when)}"
    return f"{head}\npending signals: {pending}"


async def cmd_show(store: JournalBackend, args: argparse.Namespace) -> int:
    view = await load_view(store, args.session, args.trust)
    if args.json:
        session = view.info._asdict() if view.info else None
        pending = {"count": view.pending, "names": view.pending_names}
        rows = [for_json(o) for o in view.rows]
        waiting = view.waiting.as_json() if view.waiting else None
        print_json(
            {"session": session, "pending_signals": pending, "waiting_for": waiting, "rows": rows}
        )
        return 0
    print(_session_line(args.session, view))
    if not view.rows:
        print("no rows recorded")
        return 0
    lines = [
        [o["kind"], o["name"], str(o["size"]), when(o["created_at"]), preview_text(o, args.values)]
        for o in view.rows
    ]
    print(table(["KIND", "NAME", "SIZE", "RECORDED", "VALUE"], lines))
    hidden = [o for o in view.rows if "value" not in o and not o["note"].startswith("REFUSED")]
    if any(not o["signed"] for o in hidden):
        print(
            "Unsigned pickle rows are not unpickled (unpickling runs code): "
            "pass --trust if you trust this database."
        )
    if any(o["signed"] for o in hidden):
        print(
            "Signed rows are decoded only with the signing key: set it in "
            f"${args.signing_key_env} (or name another variable with --signing-key-env)."
        )
    return 0


async def cmd_export(store: JournalBackend, args: argparse.Namespace) -> int:
    view = await load_view(store, args.session, args.trust)
    for obj in view.rows:
        print(json.dumps(for_json(obj), ensure_ascii=False, default=repr))
    return 0


def parse_payload(text: str) -> Any:
    def refuse(name: str) -> NoReturn:
        raise ValueError(f"{name} is not JSON (it has no JSON encoding)")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise CliError(
            f"PAYLOAD is not valid JSON ({exc}); give JSON text, e.g. '\"yes\"' or "
            "'{\"approved\": true}'",
            2,
        ) from None


@dataclass(frozen=True)
class Sent:
    """A signal sent: whether its session existed, whether it is signed, its encoded size."""

    session_existed: bool
    signed: bool
    size: int


async def send_signal(
    store: JournalBackend, args: argparse.Namespace, sid: str, name: str, payload: Any
) -> Sent:
    """Send signal ``name`` with ``payload`` (JSON data) to session ``sid``, as ``signal`` does:
    refused (``CliError``) when the journal's readers would refuse it (see ``check_signing``;
    ``args``: ``signing_key``, ``signing_key_env``)."""
    await check_signing(store, sid, args, "signal", "nothing was sent")
    # JSON, whatever the journal's codec: every runtime reads JSON rows (the pickle codec too).
    codec = JournalCodec("json", signing_key=args.signing_key)
    data = seal_signal(codec, sid, name, payload)
    exists = await store.session_info(sid) is not None
    if not exists:
        journal = await store.load_session(sid)
        exists = bool(journal.steps or journal.streams)
    await store.send_signal(sid, name, data, time.time())
    return Sent(exists, codec.signed, len(data))


async def cmd_signal(store: JournalBackend, args: argparse.Namespace) -> int:
    sid, name = args.session, args.name
    sent = await send_signal(store, args, sid, name, args.payload_value)
    exists = sent.session_existed
    if not exists:
        print(
            f"note: session {sid!r} has not run yet; the signal waits in its mailbox until it does",
            file=sys.stderr,
        )
    if args.json:
        obj = {"session_id": sid, "name": name, "signed": sent.signed, "size": sent.size}
        print_json({"sent": True, **obj, "session_existed": exists})
    else:
        print(f"sent {name} to {sid}")
    return 0


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use seconds or a number with s, m, h, d or w (e.g. 7d)"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: too large")
    return seconds


async def cmd_prune(store: JournalBackend, args: argparse.Namespace) -> int:
    try:
        result = await store.prune(
            older_than=args.older_than,
            sessions=args.session,
            status=args.status,
            dry_run=args.dry_run,
        )
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if args.json:
        print_json({"pruned": result.pruned, "skipped": result.skipped, "dry_run": args.dry_run})
    else:
        verb = "would prune" if args.dry_run else "pruned"
        if result.pruned:
            n = len(result.pruned)
            print(f"{verb} {n} session{'s' if n != 1 else ''}: {', '.join(result.pruned)}")
        else:
            print("nothing to prune")
        if result.skipped:
            print(f"still running: {', '.join(result.skipped)} (owned by a live runtime; kept)")
    held = [sid for sid in result.skipped if sid in (args.session or ())]
    if held:
        raise CliError(
            f"session{'s' if len(held) > 1 else ''} {', '.join(map(repr, held))} "
            "not pruned: owned by a live runtime (stop it first)"
        )
    return 0


# -- argument parsing ----------------------------------------------------------------------------


# Adds commands from outside this subpackage (the dashboard's ``ui``): called with the
# subparsers and the parent parsers of ``--db`` and ``--signing-key-env``; a command it adds sets
# ``run`` (a function of the parsed arguments returning the exit code) in its defaults.
AddCommands = Callable[[Any, argparse.ArgumentParser, argparse.ArgumentParser], None]


def build_parser(extra: Sequence[AddCommands] = ()) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jeevesagent-runtime",
        description=(
            "jeevesagent.runtime command line: inspect and operate a journal; start, cancel, "
            "fork and read workflow sessions (a worker serving the workflow runs them)."
        ),
        epilog=f"--db defaults to ${DB_ENV}. Exit codes: 0 ok, 1 operational error, 2 usage.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = _Parser(add_help=False)
    db.add_argument("--db", metavar="TARGET", help=f"SQLite path or postgres:// DSN (${DB_ENV})")
    key = _Parser(add_help=False)
    key.add_argument(
        "--signing-key-env",
        metavar="NAME",
        default=SIGNING_KEY_ENV,
        help="environment variable holding the signing key (default: %(default)s)",
    )

    p = commands.add_parser(
        "sessions", parents=[db], help="list sessions: workflow, status, what each waits for"
    )
    p.add_argument("--status", choices=SESSION_STATUSES, help="only sessions with this status")
    p.add_argument(
        "--workflow", metavar="NAME", action="append", help="only this workflow's (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="a JSON array")
    p.set_defaults(command_fn=cmd_sessions)

    p = commands.add_parser("show", parents=[db, key], help="every row of a session")
    p.add_argument("session", metavar="SESSION")
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON object (session, pending_signals, waiting_for, rows)",
    )
    p.add_argument("--trust", action="store_true", help="unpickle unsigned rows (runs code!)")
    p.add_argument("--values", action="store_true", help="print values in full")
    p.set_defaults(command_fn=cmd_show)

    p = commands.add_parser("signal", parents=[db, key], help="send a signal to a session")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("name", metavar="NAME")
    p.add_argument("payload", metavar="PAYLOAD", help="JSON text, e.g. '\"yes\"'")
    p.add_argument("--json", action="store_true", help="a JSON object")
    p.set_defaults(command_fn=cmd_signal)

    p = commands.add_parser("prune", parents=[db], help="delete whole sessions")
    p.add_argument(
        "--older-than", metavar="DURATION", type=parse_duration, help="30s, 15m, 12h, 7d, 2w"
    )
    p.add_argument("--session", metavar="S", action="append", help="this session (repeatable)")
    p.add_argument(
        "--status", action="append", choices=SESSION_STATUSES, help="this status (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.add_argument("--json", action="store_true", help="a JSON object (pruned, skipped, dry_run)")
    p.set_defaults(command_fn=cmd_prune)

    p = commands.add_parser("export", parents=[db, key], help="a session's rows as JSON lines")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--trust", action="store_true", help="unpickle unsigned rows (runs code!)")
    p.set_defaults(command_fn=cmd_export)

    add_workflow_commands(commands, db, key)
    add_stream_commands(commands, db, key)
    for add in extra:
        add(commands, db, key)

    demo = commands.add_parser(
        "demo", help="a durable agent session that crashes, then resumes (run it twice)"
    )
    demo.add_argument(
        "--path",
        default=DEFAULT_PATH,
        help="SQLite journal (default: %(default)s, in the current folder)",
    )
    demo.add_argument("--reset", action="store_true", help="delete the journal first")
    demo.add_argument("--no-crash", action="store_true", help="do not crash on the first run")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.path, reset=args.reset, crash=not args.no_crash)
    if args.command == "prune" and not (args.older_than is not None or args.session or args.status):
        raise CliError(
            "prune needs at least one filter (--older-than, --session or --status); "
            "it never deletes every session",
            2,
        )
    if args.command == "signal":  # a usage error, reported before any database is opened
        args.payload_value = parse_payload(args.payload)
    if args.command == "init-schema":
        return run_init_schema(args)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is not None:
        return run(args)
    return run_on_store(args, args.command_fn, getattr(args, "codec", None))


def main(argv: list[str] | None = None, extra: Sequence[AddCommands] = ()) -> int:
    try:
        return _dispatch(build_parser(extra).parse_args(argv))
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

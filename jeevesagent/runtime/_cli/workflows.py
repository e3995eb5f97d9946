"""The workflow commands: ``start`` (a pending session of a workflow, by name, with JSON
arguments), ``cancel``, ``fork``, ``result`` and ``init-schema``, and their arguments.

``start``, ``cancel`` and ``fork`` go through a :class:`JournaledRuntime` over the journal's
store, as an application would; the CLI never imports a workflow's code (a worker that serves
the workflow runs the session). ``result`` waits for the session to end and reads its outcome
by the rules of :mod:`~jeevesagent.runtime._cli.outcome`: a value is shown only when ``show``
would show it, so no code from the database runs without ``--trust``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import anyio

from .._backends.sqlite import SCHEMA_VERSION
from .._journal.backend import ENDED_STATUSES, JournalBackend, SessionInfo
from .._journaled.runtime import JournaledRuntime
from .outcome import read_outcome
from .shared import print_json, run_on_target
from .target import CliError, Target, init_schema

__all__ = [
    "add_workflow_commands",
    "cancel_session",
    "check_signing",
    "fork_session",
    "start_session",
]

SAMPLE_ROWS = 100  # rows read to tell whether a journal is signed (see check_signing)
POLL = 0.25  # seconds between looks at a session's status, when the store pushes no notice


async def check_signing(
    store: JournalBackend, session_id: str, args: argparse.Namespace, what: str, nothing: str
) -> None:
    """Refuse to write ``what`` (a row) that the journal's readers would refuse: unsigned rows in
    a signed journal, or signed rows in an unsigned one. Reads a sample (see
    :meth:`JournalBackend.count_signed`): every row of the session plus up to SAMPLE_ROWS rows."""
    signed, unsigned = await store.count_signed(session_id, SAMPLE_ROWS)
    env = args.signing_key_env
    if signed and not store.codec.signed:
        raise CliError(
            f"the journal is signed and no signing key is set (${env}): session {session_id!r} "
            f"would refuse an unsigned {what}; {nothing}"
        )
    if store.codec.signed and unsigned and not signed:
        raise CliError(
            f"a signing key is set (${env}) but the journal's rows are not signed: session "
            f"{session_id!r} would refuse a signed {what}; unset it. {nothing.capitalize()}"
        )


def _type_name(name: str) -> str:
    return name.removeprefix("builtins.")


def _json_or_repr(value: Any) -> tuple[bool, str]:
    """``(True, JSON text)`` for a JSON-able value, else ``(False, repr)``."""
    try:
        return True, json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return False, repr(value)


# -- commands ------------------------------------------------------------------------------------


async def start_session(
    store: JournalBackend,
    args: argparse.Namespace,
    name: str,
    sid: str,
    arguments: list[Any],
    kwargs: dict[str, Any],
) -> str:
    """Record a pending session ``sid`` of workflow ``name`` (as ``start`` does; ``args``:
    ``signing_key_env``); its status now (``pending``, or what an existing one is)."""
    await check_signing(store, sid, args, "arguments row", "nothing was started")
    rt = JournaledRuntime(store)
    try:
        await rt.start(name, sid, *arguments, **kwargs)
    finally:
        await rt.aclose()
    info = await store.session_info(sid)
    return info.status if info is not None else "pending"


async def cmd_start(store: JournalBackend, args: argparse.Namespace) -> int:
    sid, name = args.session, args.workflow
    status = await start_session(store, args, name, sid, args.args, args.kwargs)
    if args.json:
        print_json({"session_id": sid, "workflow": name, "status": status})
    elif status == "pending":
        print(f"started {sid}: workflow {name!r}, pending until a worker serving it runs it")
    else:
        print(f"{sid} exists already (workflow {name!r}, same arguments): it is {status}")
    return 0


async def cancel_session(store: JournalBackend, sid: str) -> tuple[SessionInfo, SessionInfo]:
    """Cancel session ``sid`` (as ``cancel`` does): its sessions row before and after."""
    before = await store.session_info(sid)
    if before is None:
        raise CliError(f"unknown session {sid!r}: it is not in the sessions table")
    rt = JournaledRuntime(store)
    try:
        await rt.cancel(sid)
    finally:
        await rt.aclose()
    return before, await store.session_info(sid) or before


async def cmd_cancel(store: JournalBackend, args: argparse.Namespace) -> int:
    sid = args.session
    before, after = await cancel_session(store, sid)
    if args.json:
        was = {"was": before.status, "cancel_requested": after.cancel_requested}
        print_json({"session_id": sid, "status": after.status, **was})
    if before.status in ("completed", "failed"):
        raise CliError(f"session {sid!r} already ended {before.status}: cancel changes nothing")
    if args.json:
        return 0
    if before.status == "cancelled":
        print(f"{sid} was cancelled already")
    elif after.status == "cancelled" and before.owner is not None:
        print(f"cancelled {sid} (it was {before.status}: its owner stopped it)")
    elif after.status == "cancelled":
        print(f"cancelled {sid} (it was {before.status}; it will never run)")
    else:
        print(
            f"cancel requested for {sid}: it is {after.status} (owner {after.owner or '-'}), "
            "which stops it within about a second; the step in flight records nothing"
        )
    return 0


async def fork_session(
    store: JournalBackend, args: argparse.Namespace, sid: str, new: str, at: str | None
) -> SessionInfo | None:
    """Fork session ``sid`` into ``new`` before step ``at`` (as ``fork`` does; ``args``:
    ``signing_key_env``): the new session's row."""
    await check_signing(store, sid, args, "copy of its rows", "nothing was forked")
    rt = JournaledRuntime(store)
    try:
        await rt.fork(sid, new, at=at)
    except LookupError:
        raise CliError(f"unknown session {sid!r}: it is not in the sessions table") from None
    except ValueError as exc:  # no step of that name
        raise CliError(str(exc)) from None
    finally:
        await rt.aclose()
    return await store.session_info(new)


async def cmd_fork(store: JournalBackend, args: argparse.Namespace) -> int:
    sid, new = args.session, args.new_session
    info = await fork_session(store, args, sid, new, args.at)
    workflow = info.workflow if info is not None else None
    if args.json:
        status = info.status if info is not None else "pending"
        print_json(
            {
                "session_id": new,
                "source": sid,
                "at": args.at,
                "workflow": workflow,
                "status": status,
            }
        )
    else:
        where = f"before step {args.at!r}" if args.at is not None else "whole journal"
        print(
            f"forked {sid} into {new} ({where}): pending until a worker serving "
            f"{workflow!r} runs it"
        )
    return 0


async def _wait_ended(store: JournalBackend, sid: str, timeout: float | None) -> SessionInfo:
    """The session's row once it has ended; woken by the store's notices where it pushes them,
    else by a poll every POLL seconds."""
    changed = [anyio.Event()]

    def wake(session_id: str) -> None:
        if session_id == sid:
            changed[0].set()

    info: SessionInfo | None = None
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        while True:
            changed[0] = anyio.Event()
            pushed = await store.watch(wake)
            info = await store.session_info(sid)
            if info is None:
                raise CliError(f"unknown session {sid!r}: it is not in the sessions table")
            if info.status in ENDED_STATUSES:
                return info
            with anyio.move_on_after(1.0 if pushed else POLL):
                await changed[0].wait()
    status = info.status if info is not None else "unknown"
    raise CliError(f"session {sid!r} has not ended within {timeout:g} s (it is {status})")


def _hint(note: str, args: argparse.Namespace) -> str:
    """What to do about a row that is not shown, by peek's note."""
    if "signature not checked" in note:
        return f"set the signing key in ${args.signing_key_env} to read it"
    if note.startswith("REFUSED"):
        return "the row is refused: find out how it got there"
    if "not unpickled" in note:
        return "pass --trust if you trust this database (unpickling runs code)"
    return "the row cannot be read"


async def cmd_result(store: JournalBackend, args: argparse.Namespace) -> int:
    sid = args.session
    info = await _wait_ended(store, sid, args.timeout)
    outcome = await read_outcome(store, info, trust=args.trust)
    head: dict[str, Any] = {"session_id": sid, "workflow": info.workflow, "status": info.status}
    if outcome.status == "cancelled":
        if args.json:
            print_json(head)
        raise CliError(f"session {sid!r} was cancelled: it has no result")
    if outcome.status == "failed" or outcome.failure is not None:
        if outcome.failure is None:
            if args.json:
                print_json({**head, "error": None})
            raise CliError(
                f"session {sid!r} failed; its failure is not shown ({outcome.note}): "
                f"{_hint(outcome.note, args)}"
            )
        type_name, message = outcome.failure
        if args.json:
            print_json({**head, "error": {"type": type_name, "message": message}})
        raise CliError(f"session {sid!r} failed: {_type_name(type_name)}: {message}")
    read = outcome.value
    if read is not None and not read.ok:
        raise CliError(
            f"session {sid!r} completed, but its result is not shown ({read.format}, "
            f"{read.note}): {_hint(read.note, args)}"
        )
    value = read.value if read is not None else None
    is_json, text = _json_or_repr(value)
    if args.json:
        print_json({**head, "value": value if is_json else text})
    else:
        print(text)
    return 0


def run_init_schema(args: argparse.Namespace) -> int:
    async def go(target: Target) -> int:
        existed = await init_schema(target)
        if args.json:
            print_json(
                {"target": target.shown, "created": not existed, "schema_version": SCHEMA_VERSION}
            )
        elif existed:
            print(f"journal tables ready in {target.shown} (schema version {SCHEMA_VERSION})")
        else:
            print(f"created the journal tables in {target.shown} (schema version {SCHEMA_VERSION})")
        return 0

    return run_on_target(args, go)


# -- arguments -----------------------------------------------------------------------------------


def _json_arg(kind: type, example: str) -> Any:
    what = "array" if kind is list else "object"

    def parse(text: str) -> Any:
        def refuse(name: str) -> Any:
            raise ValueError(f"{name} is not JSON")

        try:
            value = json.loads(text, parse_constant=refuse)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"not valid JSON ({exc}): give a JSON {what}, e.g. {example}"
            ) from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"give a JSON {what}, e.g. {example}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: give seconds, e.g. 30")
    return value


def add_workflow_commands(
    commands: Any, db: argparse.ArgumentParser, key: argparse.ArgumentParser
) -> None:
    """The workflow commands, in the subparsers ``commands``; ``db`` and ``key`` are the parent
    parsers of ``--db`` and ``--signing-key-env``."""
    p = commands.add_parser(
        "start",
        parents=[db, key],
        help="start a session of a workflow, by name (a worker serving it runs it)",
        description=(
            "Record a pending session of the workflow WORKFLOW with JSON arguments, as "
            "rt.start(WORKFLOW, SESSION, *args, **kwargs) does; a worker serving the workflow "
            "(rt.serve) runs it. This process does not import the workflow's code. The same "
            "SESSION with the same arguments changes nothing; with other arguments it is refused."
        ),
        epilog="example: start trip order-42 --args '[\"Oslo\"]' --kwargs '{\"nights\": 3}'",
    )
    p.add_argument("workflow", metavar="WORKFLOW", help="the workflow's registered name")
    p.add_argument("session", metavar="SESSION")
    p.add_argument(
        "--args",
        type=_json_arg(list, "'[\"ada\", 3]'"),
        default=[],
        metavar="JSON",
        help="positional arguments, a JSON array",
    )
    p.add_argument(
        "--kwargs",
        type=_json_arg(dict, '\'{"user": "ada"}\''),
        default={},
        metavar="JSON",
        help="keyword arguments, a JSON object",
    )
    p.add_argument(
        "--json", action="store_true", help="a JSON object (session_id, workflow, status)"
    )
    p.set_defaults(command_fn=cmd_start, codec="json")

    p = commands.add_parser("cancel", parents=[db], help="cancel a session, for good")
    p.add_argument("session", metavar="SESSION")
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON object (session_id, status, was, cancel_requested)",
    )
    p.set_defaults(command_fn=cmd_cancel)

    p = commands.add_parser(
        "fork", parents=[db, key], help="copy a session's journal into a new pending session"
    )
    p.add_argument("session", metavar="SESSION")
    p.add_argument("new_session", metavar="NEW_SESSION")
    p.add_argument(
        "--at",
        metavar="STEP",
        help="keep only the rows recorded before the first step named STEP (default: all)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON object (session_id, source, at, workflow, status)",
    )
    p.set_defaults(command_fn=cmd_fork)

    p = commands.add_parser(
        "result",
        parents=[db, key],
        help="wait for a session to end; print its result (exit 1 if it failed or was cancelled)",
        description=(
            "Wait until SESSION ends, then print its result: as JSON when it is JSON data, else "
            "its repr. A pickled result is unpickled only when its signature verifies with the "
            "signing key, or with --trust (as show decides). A failed session prints its "
            "failure's type and message (read without running code from the row) and exits 1; "
            "a cancelled one exits 1."
        ),
    )
    p.add_argument("session", metavar="SESSION")
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up after S seconds (exit 1); default: wait until it ends",
    )
    p.add_argument("--trust", action="store_true", help="unpickle an unsigned result (runs code!)")
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON object (session_id, workflow, status, value or error)",
    )
    p.set_defaults(command_fn=cmd_result)

    p = commands.add_parser(
        "init-schema",
        parents=[db],
        help="create the journal's tables, or migrate them (idempotent)",
    )
    p.add_argument(
        "--json", action="store_true", help="a JSON object (target, created, schema_version)"
    )
    p.set_defaults(command_fn=None)

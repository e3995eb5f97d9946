"""The ``ui`` command: ``jeevesagent-runtime ui --db TARGET [--host 127.0.0.1 --port 8765]``
serves the dashboard with hypercorn, under asyncio or trio (``--loop``), until SIGINT or
SIGTERM. Its token comes from ``--token`` or ``$JEEVESAGENT_UI_TOKEN``; without one it refuses
to start unless ``--no-auth`` is given and it binds a loopback address.

Nothing here imports Starlette or hypercorn until the command runs: the command line works
without the ``[ui]`` extra, and says what to install when it is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._cli.shared import run_on_target, signing_key
from .._cli.target import CliError, Target, open_store
from .guard import TOKEN_ENV, is_loopback_host

__all__ = ["DEFAULT_PORT", "add_ui_command", "run_ui"]

DEFAULT_PORT = 8765
EXTRA_HINT = "pip install 'jeevesagent[ui]'"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: a number from 1 to 65535")
    return int(text)


def _poll(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: seconds from 0.05 to 60")
    return value


def add_ui_command(
    commands: Any, db: argparse.ArgumentParser, key: argparse.ArgumentParser
) -> None:
    """The ``ui`` command, in the subparsers ``commands`` (``db``, ``key``: the parents)."""
    p = commands.add_parser(
        "ui",
        parents=[db, key],
        help="serve the web dashboard: sessions, journals, streams; approve, cancel, fork, start",
        description=(
            "Serve the web dashboard of a journal (needs the [ui] extra). Anyone who can reach "
            "it reads the sessions and previews of their values (JSON, and pickles only when "
            "signed and the signing key is set); actions (signal, cancel, fork, start) need the "
            f"token, from --token or ${TOKEN_ENV}. --no-auth serves without one, to loopback "
            "clients only."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port to bind (default: %(default)s)"
    )
    p.add_argument(
        "--token", metavar="TOKEN", help=f"the token actions need (default: ${TOKEN_ENV})"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="no token: actions from loopback clients only (needs a loopback --host)",
    )
    p.add_argument(
        "--loop", choices=("asyncio", "trio"), default="asyncio", help="event loop (%(default)s)"
    )
    p.add_argument(
        "--workflow",
        metavar="NAME",
        action="append",
        help="a workflow name the start form offers (repeatable; those in the journal are too)",
    )
    p.add_argument(
        "--poll", type=_poll, default=1.0, metavar="S", help="seconds between live looks (1)"
    )
    p.set_defaults(run=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not args.no_auth:
        raise CliError(
            f"the dashboard needs a token for its actions: pass --token or set ${TOKEN_ENV} "
            "(or --no-auth, on a loopback --host, to go without)",
            2,
        )
    if token is None and not is_loopback_host(args.host):
        raise CliError(
            f"--no-auth serves loopback clients only, and --host {args.host} is not loopback: "
            f"bind 127.0.0.1 or set a token (--token or ${TOKEN_ENV})",
            2,
        )
    if token is not None and len(token) < 16:
        raise CliError("the dashboard's token is too short: use 16 characters or more", 2)
    try:
        import hypercorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs the [ui] extra ({exc.name} is missing): {EXTRA_HINT}"
        ) from None
    key = signing_key(args)

    async def go(target: Target) -> int:
        from .app import make_app

        store = await open_store(target, key)
        try:
            app = make_app(
                store,
                token=token,
                no_auth=token is None,
                signing_key_env=args.signing_key_env,
                workflows=args.workflow or (),
                poll_interval=args.poll,
            )
            host = f"[{args.host}]" if ":" in args.host else args.host
            auth = "actions need the token" if token else "no auth: loopback clients only"
            print(
                f"jeevesagent dashboard for {target.shown} on http://{host}:{args.port}/ ({auth})",
                flush=True,
            )
            await serve(app, f"{host}:{args.port}", args.loop)
        finally:
            await store.aclose()
        return 0

    return run_on_target(args, go, args.loop)


async def _stopped() -> None:
    """Return on SIGINT or SIGTERM: hypercorn's cue to shut down gracefully."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"stopping ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
            return


async def serve(
    app: Any, bind: str, loop: str, stop: Callable[[], Awaitable[None]] = _stopped
) -> None:
    """Serve ``app`` with hypercorn on ``bind`` (``host:port``) in the running ``loop``
    (``asyncio`` or ``trio``) until ``stop()`` returns (default: on SIGINT or SIGTERM)."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [bind]
    config.accesslog = None  # request lines are not logged (a query names sessions, no values)
    config.graceful_timeout = 2.0  # event streams never end on their own
    if loop == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=stop)
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=stop)

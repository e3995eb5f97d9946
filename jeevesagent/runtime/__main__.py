"""Command line: ``python -m jeevesagent.runtime demo`` (or the ``jeevesagent-runtime`` script)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jeevesagent-runtime", description="jeevesagent.runtime command line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="a durable agent session that crashes, then resumes (run it twice)"
    )
    demo.add_argument("--path", default=None, help="SQLite journal (default: %(default)s)")
    demo.add_argument("--reset", action="store_true", help="delete the journal first")
    demo.add_argument("--no-crash", action="store_true", help="do not crash on the first run")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ._demo import DEFAULT_PATH, run_demo

        return run_demo(args.path or DEFAULT_PATH, reset=args.reset, crash=not args.no_crash)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

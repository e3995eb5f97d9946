"""Command line: ``python -m jeevesagent.runtime`` (or the ``jeevesagent-runtime`` script).

The commands live in :mod:`jeevesagent.runtime._cli`, and the dashboard's ``ui`` command in
:mod:`jeevesagent.runtime._ui.command` (added here, so the command line below it never imports
the dashboard); this module is the entry point only.
"""

from __future__ import annotations

import sys

from ._cli.commands import main as _main
from ._ui.command import add_ui_command

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extra=[add_ui_command])


if __name__ == "__main__":
    sys.exit(main())

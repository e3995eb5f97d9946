"""Command line: ``python -m jeevesagent.runtime`` (or the ``jeevesagent-runtime`` script).

The commands live in :mod:`jeevesagent.runtime._cli`; this module is the entry point only.
"""

from __future__ import annotations

import sys

from ._cli.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

"""jeevesagent: durable execution for Python agent workflows (see :mod:`jeevesagent.runtime`).

This package holds only ``__version__``: the installed distribution's version, or ``"0+unknown"``
when the code runs from a source tree that was never installed.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__: str = _version("jeevesagent")
except PackageNotFoundError:  # not installed: imported from a source tree on sys.path
    __version__ = "0+unknown"

__all__ = ["__version__"]

del PackageNotFoundError, _version

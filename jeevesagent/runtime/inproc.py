"""The in-process runtime (no durability). Published import path."""

from ._core.inproc import InProcRuntime as InProcRuntime
from ._core.inproc import InProcSession as InProcSession

__all__ = ["InProcRuntime", "InProcSession"]

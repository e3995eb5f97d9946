"""The in-process runtime (no durability). Published import path."""

from ._inproc import InProcRuntime as InProcRuntime
from ._inproc import InProcSession as InProcSession

__all__ = ["InProcRuntime", "InProcSession"]

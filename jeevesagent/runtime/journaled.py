"""The journaled runtime. Published import path."""

from ._journaled.runtime import JournaledRuntime as JournaledRuntime
from ._journaled.runtime import JournaledSession as JournaledSession

__all__ = ["JournaledRuntime", "JournaledSession"]

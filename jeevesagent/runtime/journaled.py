"""The journaled runtime. Published import path."""

from ._journaled import JournaledRuntime as JournaledRuntime
from ._journaled import JournaledSession as JournaledSession

__all__ = ["JournaledRuntime", "JournaledSession"]

"""jeevesagent.runtime: durable execution for agent workflows, on asyncio and trio.

Wrap each side effect in ``await runtime.step(name, fn, *args)`` inside
``async with runtime.session(session_id)``; when the same session runs again, recorded steps
replay from the journal instead of running again.
"""

from jeevesagent import __version__ as __version__

from ._errors import InvalidNameError as InvalidNameError
from ._errors import JournalCorruptError as JournalCorruptError
from ._errors import JournalIntegrityError as JournalIntegrityError
from ._errors import JournalMismatchError as JournalMismatchError
from ._errors import RuntimeJournalError as RuntimeJournalError
from ._errors import SessionBusyError as SessionBusyError
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreError as StoreError
from ._errors import ValueEncodingError as ValueEncodingError
from ._inproc import InProcRuntime as InProcRuntime
from ._inproc import InProcSession as InProcSession
from ._journaled import JournaledRuntime as JournaledRuntime
from ._journaled import JournaledSession as JournaledSession
from ._policy import RetryPolicy as RetryPolicy
from ._policy import StepFailedError as StepFailedError
from ._policy import StepPolicy as StepPolicy
from ._policy import StepTimeoutError as StepTimeoutError
from ._policy import with_policy as with_policy
from ._postgres import PostgresJournalStore as PostgresJournalStore
from ._runtimes import PostgresRuntime as PostgresRuntime
from ._runtimes import SqliteRuntime as SqliteRuntime
from ._sqlite import SqliteJournalStore as SqliteJournalStore
from ._store import InMemoryJournalStore as InMemoryJournalStore
from ._store import JournalEntry as JournalEntry
from ._store import JournalStore as JournalStore
from ._store import PruneResult as PruneResult
from ._store import SessionInfo as SessionInfo
from ._values import JsonCodec as JsonCodec
from ._values import PickleCodec as PickleCodec

__all__ = (
    "__version__",
    "InMemoryJournalStore",
    "InProcRuntime",
    "InProcSession",
    "InvalidNameError",
    "JournalCorruptError",
    "JournalEntry",
    "JournalIntegrityError",
    "JournalMismatchError",
    "JournalStore",
    "JournaledRuntime",
    "JournaledSession",
    "JsonCodec",
    "PickleCodec",
    "PostgresJournalStore",
    "PostgresRuntime",
    "PruneResult",
    "RetryPolicy",
    "RuntimeJournalError",
    "SessionBusyError",
    "SessionInfo",
    "SqliteJournalStore",
    "SqliteRuntime",
    "StepFailedError",
    "StepPolicy",
    "StepTimeoutError",
    "StoreClosedError",
    "StoreError",
    "ValueEncodingError",
    "with_policy",
)

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("jeevesagent.runtime._"):
        _obj.__module__ = __name__
del _name, _obj

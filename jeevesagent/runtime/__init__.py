"""jeevesagent.runtime: durable execution for agent workflows, on asyncio and trio.

Wrap each side effect in ``await runtime.step(name, fn, *args)`` inside
``async with runtime.session(session_id)``; when the same session runs again, recorded steps
replay from the journal instead of running again.
"""

from jeevesagent import __version__ as __version__

from ._backends.postgres import PostgresJournalStore as PostgresJournalStore
from ._backends.runtimes import PostgresRuntime as PostgresRuntime
from ._backends.runtimes import SqliteRuntime as SqliteRuntime
from ._backends.sqlite import SqliteJournalStore as SqliteJournalStore
from ._core.inproc import InProcRuntime as InProcRuntime
from ._core.inproc import InProcSession as InProcSession
from ._core.registry import current_runtime as current_runtime
from ._core.registry import current_session as current_session
from ._core.registry import workflow as workflow
from ._core.streams import current_stream_prefix as current_stream_prefix
from ._core.values import JsonCodec as JsonCodec
from ._core.values import PickleCodec as PickleCodec
from ._errors import InvalidNameError as InvalidNameError
from ._errors import JournalCorruptError as JournalCorruptError
from ._errors import JournalIntegrityError as JournalIntegrityError
from ._errors import JournalMismatchError as JournalMismatchError
from ._errors import RuntimeJournalError as RuntimeJournalError
from ._errors import SessionBusyError as SessionBusyError
from ._errors import SessionCancelledError as SessionCancelledError
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreError as StoreError
from ._errors import StreamFailedError as StreamFailedError
from ._errors import ValueEncodingError as ValueEncodingError
from ._journal.backend import JournalBackend as JournalBackend
from ._journal.backend import JournalEntry as JournalEntry
from ._journal.backend import JournalStore as JournalStore
from ._journal.backend import PruneResult as PruneResult
from ._journal.backend import SessionInfo as SessionInfo
from ._journal.memory import InMemoryJournalStore as InMemoryJournalStore
from ._journaled.runtime import JournaledRuntime as JournaledRuntime
from ._journaled.runtime import JournaledSession as JournaledSession
from ._journaled.workflows import WorkflowHandle as WorkflowHandle
from ._policy import RetryPolicy as RetryPolicy
from ._policy import StepFailedError as StepFailedError
from ._policy import StepPolicy as StepPolicy
from ._policy import StepTimeoutError as StepTimeoutError
from ._policy import with_policy as with_policy

__all__ = (
    "__version__",
    "InMemoryJournalStore",
    "InProcRuntime",
    "InProcSession",
    "InvalidNameError",
    "JournalCorruptError",
    "JournalBackend",
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
    "SessionCancelledError",
    "SessionInfo",
    "SqliteJournalStore",
    "SqliteRuntime",
    "StepFailedError",
    "StepPolicy",
    "StepTimeoutError",
    "StoreClosedError",
    "StoreError",
    "StreamFailedError",
    "ValueEncodingError",
    "WorkflowHandle",
    "current_runtime",
    "current_session",
    "current_stream_prefix",
    "with_policy",
    "workflow",
)

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("jeevesagent.runtime._"):
        _obj.__module__ = __name__
del _name, _obj


def __getattr__(name: str) -> object:
    # DBOSRuntime (extra [dbos]) is loaded on first use: importing jeevesagent.runtime never
    # imports dbos, and making one without the extra raises an ImportError naming it.
    if name == "DBOSRuntime":
        from .dbos import DBOSRuntime

        return DBOSRuntime
    # TemporalRuntime (extra [temporal]) likewise: jeevesagent.runtime.temporal imports
    # temporalio, or raises an ImportError naming the extra.
    if name == "TemporalRuntime":
        from .temporal import TemporalRuntime

        return TemporalRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

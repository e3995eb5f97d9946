"""The SQLite store and runtime (the embedded default). Published import path."""

from ._runtimes import SqliteRuntime as SqliteRuntime
from ._sqlite import SqliteJournalStore as SqliteJournalStore

__all__ = ["SqliteJournalStore", "SqliteRuntime"]

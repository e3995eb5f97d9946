"""The SQLite store and runtime (the embedded default). Published import path."""

from ._backends.runtimes import SqliteRuntime as SqliteRuntime
from ._backends.sqlite import SqliteJournalStore as SqliteJournalStore

__all__ = ["SqliteJournalStore", "SqliteRuntime"]

"""Journal entries and stores. Published import path."""

from ._backends.postgres import PostgresJournalStore as PostgresJournalStore
from ._backends.sqlite import SqliteJournalStore as SqliteJournalStore
from ._journal.backend import JournalEntry as JournalEntry
from ._journal.backend import JournalStore as JournalStore
from ._journal.memory import InMemoryJournalStore as InMemoryJournalStore

__all__ = [
    "InMemoryJournalStore",
    "JournalEntry",
    "JournalStore",
    "PostgresJournalStore",
    "SqliteJournalStore",
]

"""Journal entries and stores. Published import path."""

from ._postgres import PostgresJournalStore as PostgresJournalStore
from ._sqlite import SqliteJournalStore as SqliteJournalStore
from ._store import InMemoryJournalStore as InMemoryJournalStore
from ._store import JournalEntry as JournalEntry
from ._store import JournalStore as JournalStore

__all__ = [
    "InMemoryJournalStore",
    "JournalEntry",
    "JournalStore",
    "PostgresJournalStore",
    "SqliteJournalStore",
]

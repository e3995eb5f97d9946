"""Journal entries and stores (published import path), and the store-backend contract.

``JournalStore`` is the published five-method protocol: any object with those methods works with
``JournaledRuntime``. ``JournalBackend`` is the complete contract a store implements to get
everything the runtime offers (bulk load, group commit, claims and leases, the durable mailbox,
the sessions table, prune); the bundled stores derive from it, and
``jeevesagent.runtime.testing`` checks a backend against it. ``Record`` and ``Row`` are the
journal rows a backend writes and returns (values already encoded), ``SessionJournal`` a
session's rows as loaded in one round trip, ``OpenedSession`` what ``open_session`` returns
(the claim, the journal and the mailbox names, in one round trip), ``Fenced`` what a write for
a session another owner holds raises, and ``STEP`` / ``STREAM`` the two row kinds.
"""

from ._backends.postgres import PostgresJournalStore as PostgresJournalStore
from ._backends.sqlite import SqliteJournalStore as SqliteJournalStore
from ._journal.backend import SESSION_STATUSES as SESSION_STATUSES
from ._journal.backend import STEP as STEP
from ._journal.backend import STREAM as STREAM
from ._journal.backend import Fenced as Fenced
from ._journal.backend import JournalBackend as JournalBackend
from ._journal.backend import JournalEntry as JournalEntry
from ._journal.backend import JournalStore as JournalStore
from ._journal.backend import OpenedSession as OpenedSession
from ._journal.backend import PruneResult as PruneResult
from ._journal.backend import Record as Record
from ._journal.backend import Row as Row
from ._journal.backend import SessionInfo as SessionInfo
from ._journal.backend import SessionJournal as SessionJournal
from ._journal.memory import InMemoryJournalStore as InMemoryJournalStore

__all__ = [
    "SESSION_STATUSES",
    "STEP",
    "STREAM",
    "Fenced",
    "InMemoryJournalStore",
    "JournalBackend",
    "JournalEntry",
    "JournalStore",
    "OpenedSession",
    "PostgresJournalStore",
    "PruneResult",
    "Record",
    "Row",
    "SessionInfo",
    "SessionJournal",
    "SqliteJournalStore",
]

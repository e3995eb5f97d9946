"""The Postgres store and runtime (many workers, one database). Published import path.

Needs the ``postgres`` extra (asyncpg), imported only when a connection is made.
"""

from ._backends.postgres import PostgresJournalStore as PostgresJournalStore
from ._backends.runtimes import PostgresRuntime as PostgresRuntime

__all__ = ["PostgresJournalStore", "PostgresRuntime"]

"""Runtimes bound to one bundled store: SQLite (the embedded default) and Postgres."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Self

from ._journaled import JournaledRuntime
from ._sqlite import SqliteJournalStore

__all__ = ["PostgresRuntime", "SqliteRuntime"]


class SqliteRuntime(JournaledRuntime):
    """A :class:`JournaledRuntime` over a :class:`SqliteJournalStore` at ``path`` (which it owns
    and closes on ``aclose()``)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(SqliteJournalStore(path))
        self._owns_store = True
        self.path: pathlib.Path = self.store.path  # type: ignore[attr-defined]


class PostgresRuntime(JournaledRuntime):
    """A :class:`JournaledRuntime` over a :class:`PostgresJournalStore` on an asyncpg ``pool``.

    ``await PostgresRuntime.connect(dsn)`` creates the pool too; call ``await init_schema()`` once
    (idempotent) before the first session.
    """

    name = "postgres"

    def __init__(self, pool: Any) -> None:
        from ._postgres import PostgresJournalStore

        super().__init__(PostgresJournalStore(pool))
        self._owns_store = True

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> Self:
        """Connect a pool to ``dsn`` and return a runtime that owns it."""
        from ._postgres import PostgresJournalStore

        store = await PostgresJournalStore.connect(dsn, min_size=min_size, max_size=max_size)
        runtime = cls.__new__(cls)
        JournaledRuntime.__init__(runtime, store)
        runtime._owns_store = True
        return runtime

    async def init_schema(self) -> None:
        """Create the journal tables if they do not exist (safe to call from many workers)."""
        await self.store.init_schema()  # type: ignore[attr-defined]

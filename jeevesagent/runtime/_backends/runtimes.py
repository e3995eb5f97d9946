"""Runtimes bound to one bundled store: SQLite (the embedded default) and Postgres."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Literal, Self

from .._core.values import Codec
from .._journaled.runtime import JournaledRuntime
from .sqlite import SqliteJournalStore

__all__ = ["PostgresRuntime", "SqliteRuntime"]


class SqliteRuntime(JournaledRuntime):
    """A :class:`JournaledRuntime` over a :class:`SqliteJournalStore` at ``path`` (which it owns
    and closes on ``aclose()``)."""

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["commit", "buffered"] = "commit",
        flush_interval: float = 0.05,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        **options: Any,
    ) -> None:
        """``codec``, ``signing_key``: see :class:`SqliteJournalStore`. ``options``: the other
        keyword options of :class:`JournaledRuntime` (``lease``, ``poll_interval``, ``policy``,
        ``strict``)."""
        super().__init__(
            SqliteJournalStore(path, codec=codec, signing_key=signing_key),
            durability=durability,
            flush_interval=flush_interval,
            **options,
        )
        self._owns_store = True
        self.path: pathlib.Path = self.store.path  # type: ignore[attr-defined]


class PostgresRuntime(JournaledRuntime):
    """A :class:`JournaledRuntime` over a :class:`PostgresJournalStore` on an asyncpg ``pool``.

    ``await PostgresRuntime.connect(dsn)`` creates the pool too; call ``await init_schema()`` once
    (idempotent) before the first session.
    """

    name = "postgres"

    def __init__(
        self,
        pool: Any,
        *,
        durability: Literal["commit", "buffered"] = "commit",
        flush_interval: float = 0.05,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        **options: Any,
    ) -> None:
        from .postgres import PostgresJournalStore

        store = PostgresJournalStore(pool, codec=codec, signing_key=signing_key)
        self._init(store, durability, flush_interval, options)

    def _init(
        self,
        store: Any,
        durability: Literal["commit", "buffered"],
        flush_interval: float,
        options: dict[str, Any],
    ) -> None:
        JournaledRuntime.__init__(
            self, store, durability=durability, flush_interval=flush_interval, **options
        )
        self._owns_store = True

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        durability: Literal["commit", "buffered"] = "commit",
        flush_interval: float = 0.05,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        **options: Any,
    ) -> Self:
        """Connect a pool to ``dsn`` and return a runtime that owns it. ``codec``,
        ``signing_key``: see :class:`SqliteJournalStore`. ``options``: the other keyword options
        of :class:`JournaledRuntime`."""
        from .postgres import PostgresJournalStore

        store = await PostgresJournalStore.connect(
            dsn, min_size=min_size, max_size=max_size, codec=codec, signing_key=signing_key
        )
        runtime = cls.__new__(cls)
        runtime._init(store, durability, flush_interval, options)
        return runtime

    async def init_schema(self) -> None:
        """Create the journal tables if they do not exist (safe to call from many workers)."""
        await self.store.init_schema()  # type: ignore[attr-defined]

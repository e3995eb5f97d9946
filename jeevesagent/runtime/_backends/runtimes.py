"""Runtimes bound to one bundled store: SQLite (the embedded default) and Postgres."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any, Literal, Self

from .._core.values import Codec
from .._journaled.runtime import JournaledRuntime
from .sqlite import SqliteJournalStore

if TYPE_CHECKING:
    from .postgres import PostgresJournalStore

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
        store = SqliteJournalStore(path, codec=codec, signing_key=signing_key)
        super().__init__(store, durability=durability, flush_interval=flush_interval, **options)
        self._owns_store = True
        self.path: pathlib.Path = store.path


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
        _store: PostgresJournalStore | None = None,
        **options: Any,
    ) -> None:
        """``codec``, ``signing_key``, ``options``: see :class:`SqliteRuntime`. (``_store`` is
        :meth:`connect`'s: the store it connected, whose pool it owns, in place of ``pool``.)"""
        from .postgres import PostgresJournalStore

        store = (
            _store
            if _store is not None
            else PostgresJournalStore(pool, codec=codec, signing_key=signing_key)
        )
        super().__init__(store, durability=durability, flush_interval=flush_interval, **options)
        self._owns_store = True
        self._pg_store = store

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
        libpq_writes: bool | None = None,
        **options: Any,
    ) -> Self:
        """Connect a pool to ``dsn`` and return a runtime that owns it. ``codec``,
        ``signing_key``: see :class:`SqliteJournalStore`; ``libpq_writes``: see
        :meth:`PostgresJournalStore.connect` (by default, under trio, journal writes go over
        libpq in trio's own loop). ``options``: the other keyword options of
        :class:`JournaledRuntime`."""
        from .postgres import PostgresJournalStore

        store = await PostgresJournalStore.connect(
            dsn,
            min_size=min_size,
            max_size=max_size,
            codec=codec,
            signing_key=signing_key,
            libpq_writes=libpq_writes,
        )
        try:
            return cls(
                None, durability=durability, flush_interval=flush_interval, _store=store, **options
            )
        except BaseException:  # bad options: close the pool just opened, then report them
            await store.aclose()
            raise

    async def init_schema(self) -> None:
        """Create the journal tables if they do not exist (safe to call from many workers)."""
        await self._pg_store.init_schema()

"""The bundled stores pass the exported conformance suite (``jeevesagent.runtime.testing``), run
here the way a third party runs it on its own backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jeevesagent.runtime import (
    InMemoryJournalStore,
    JournalEntry,
    PostgresJournalStore,
    SqliteJournalStore,
)
from jeevesagent.runtime._journal.adapter import StoreAdapter
from jeevesagent.runtime.journal import JournalBackend
from jeevesagent.runtime.testing import BackendOpener, JournalBackendConformance

from .test_public_api import run_repo_python


def test_the_package_does_not_import_pytest() -> None:
    """pytest is a test extra: only ``jeevesagent.runtime.testing`` needs it."""
    code = (
        "import sys, jeevesagent.runtime, jeevesagent.runtime.journal\n"
        "assert 'pytest' not in sys.modules, 'pytest was imported'\n"
        "import jeevesagent.runtime.testing\n"
        "assert 'pytest' in sys.modules\n"
    )
    result = run_repo_python(code)
    assert result.returncode == 0, result.stderr


class TestInMemoryStore(JournalBackendConformance):
    shared_storage = False  # the dicts are the store object itself

    @pytest.fixture
    def open_backend(self) -> BackendOpener:
        store = InMemoryJournalStore()
        return lambda: store


class TestSqliteStore(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> BackendOpener:
        return lambda: SqliteJournalStore(tmp_path / "journal.sqlite3")


class TestSqliteStoreJsonCodec(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> BackendOpener:
        return lambda: SqliteJournalStore(tmp_path / "journal.sqlite3", codec="json")


class TestSqliteStoreSigned(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> BackendOpener:
        key = "conformance-signing-key"
        return lambda: SqliteJournalStore(tmp_path / "journal.sqlite3", signing_key=key)


class TestPostgresStore(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, pg_schema_dsn: str) -> BackendOpener:
        async def connect() -> JournalBackend:
            store = await PostgresJournalStore.connect(pg_schema_dsn, min_size=1, max_size=4)
            await store.init_schema()
            return store

        return connect


class TestPostgresStoreAsyncpgWrites(JournalBackendConformance):
    """Journal writes through asyncpg (``libpq_writes=False``; a store on a pool you pass in)."""

    @pytest.fixture
    def open_backend(self, pg_schema_dsn: str) -> BackendOpener:
        async def connect() -> JournalBackend:
            store = await PostgresJournalStore.connect(
                pg_schema_dsn, min_size=1, max_size=4, libpq_writes=False
            )
            await store.init_schema()
            return store

        return connect


class FiveMethodStore:
    """A third-party store with only the five published methods, first writer wins."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], JournalEntry] = {}
        self.streams: dict[tuple[str, str], list[Any]] = {}

    async def get_step(self, session_id: str, step_name: str) -> JournalEntry | None:
        return self.steps.get((session_id, step_name))

    async def put_step(self, session_id: str, step_name: str, value: Any) -> None:
        self.steps.setdefault((session_id, step_name), JournalEntry(value, time.time()))

    async def get_stream(self, session_id: str, step_name: str) -> list[Any] | None:
        chunks = self.streams.get((session_id, step_name))
        return None if chunks is None else list(chunks)

    async def put_stream(self, session_id: str, step_name: str, chunks: list[Any]) -> None:
        self.streams.setdefault((session_id, step_name), list(chunks))

    async def aclose(self) -> None:
        pass


class TestStoreAdapter(JournalBackendConformance):
    """The adapter ``JournaledRuntime`` puts in front of a five-method store: its sessions table
    and mailbox live in the adapter object, and it cannot delete rows."""

    shared_storage = False
    can_prune = False

    @pytest.fixture
    def open_backend(self) -> BackendOpener:
        adapter = StoreAdapter(FiveMethodStore())
        return lambda: adapter

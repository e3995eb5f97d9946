"""The journal a CLI command opens, and opening it: ``--db`` (or ``$JEEVESAGENT_DB``) names a
SQLite path or a ``postgres://`` / ``postgresql://`` DSN. Every way that can fail (no such file,
not a journal, a malformed DSN, no asyncpg driver, no server, no tables) becomes a
:class:`CliError`, printed by :mod:`~jeevesagent.runtime._cli` as one ``error:`` line; passwords
in a DSN are never printed. Also creating (or migrating) a target's tables: ``init-schema``.
"""

from __future__ import annotations

import pathlib
import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Literal

import anyio

from .._backends.postgres import PostgresJournalStore
from .._backends.sqlite import SqliteJournalStore
from .._core.values import Codec
from .._errors import StoreError
from .._journal.backend import JournalBackend

__all__ = [
    "CONNECT_TIMEOUT",
    "DB_ENV",
    "CliError",
    "Target",
    "init_schema",
    "open_store",
    "parse_target",
]

DB_ENV = "JEEVESAGENT_DB"
CONNECT_TIMEOUT = 15.0  # seconds; asyncpg's own default (60 s) is long for a command line
_DSN_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, an IPv6 host in brackets ([::1])"


class CliError(Exception):
    """A failure reported as one ``error:`` line; ``code`` 1 (operational) or 2 (usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Target:
    kind: Literal["sqlite", "postgres"]
    value: str  # the path or DSN as given
    shown: str  # for messages: the DSN without its password
    secrets: tuple[str, ...] = ()  # never printed

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def parse_target(raw: str | None) -> Target:
    if not raw:
        raise CliError(f"no journal given: pass --db PATH_OR_DSN or set ${DB_ENV}", 2)
    if not raw.startswith(("postgres://", "postgresql://")):
        return Target("sqlite", raw, raw)
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError as exc:
        # The DSN is not shown: it cannot be parsed, so its password cannot be hidden.
        raise CliError(
            f"the PostgreSQL DSN is malformed ({exc}): write it as {_DSN_FORM}", 2
        ) from None
    secrets = []
    netloc = parts.netloc
    if parts.password:
        secrets.append(parts.password)
        user, _, hosts = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{hosts}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    for name, value in query:
        if name == "password" and value:
            secrets.append(value)
    shown_query = "&".join(
        f"{name}={'***' if name == 'password' else value}" for name, value in query
    )
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, shown_query, ""))
    return Target("postgres", raw, shown, tuple(s for s in secrets if s))


def _sqlite_tables(target: Target) -> set[str] | None:
    """The tables of the SQLite file at the target (``None``: no such file); ``CliError`` for
    a path that is not a SQLite database. Read-only: ``mode=ro`` never creates a file."""
    path = pathlib.Path(target.value).expanduser()
    if not path.exists():
        return None
    if path.is_dir():
        raise CliError(f"{target.value} is a directory, not a journal file")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CliError(f"{target.value} cannot be read as a SQLite database ({exc})") from None


# jrt_journal, or journal_steps/journal_streams: a jeevesagent 0.9.7 journal, imported on open
_JOURNAL_TABLES = {"jrt_journal", "journal_steps", "journal_streams"}


def _check_sqlite_file(target: Target) -> None:
    """Refuse, before the store opens it (which would create the file or tables), a path that is
    not a journal."""
    tables = _sqlite_tables(target)
    if tables is None:
        raise CliError(
            f"no journal at {target.value} (create one with `jeevesagent-runtime init-schema`)"
        )
    if not tables & _JOURNAL_TABLES:
        raise CliError(
            f"{target.value} is a SQLite database but not a jeevesagent journal "
            "(it has no jrt_journal table)"
        )


async def open_store(
    target: Target, signing_key: str | None, codec: str | Codec | None = None
) -> JournalBackend:
    """The store at ``target``, which must hold a journal already (see :func:`init_schema`)."""
    if target.kind == "sqlite":
        _check_sqlite_file(target)
        return SqliteJournalStore(target.value, codec=codec, signing_key=signing_key)
    store = await _connect(target, signing_key, codec)
    try:
        await _check_pg_tables(store, target)
    except BaseException:
        await store.aclose()
        raise
    return store


async def init_schema(target: Target) -> bool:
    """Create the journal's tables at ``target``, or migrate them to the current schema version
    (idempotent); ``True`` if they were there before. A SQLite file is created if missing."""
    if target.kind == "sqlite":
        existed = bool((_sqlite_tables(target) or set()) & _JOURNAL_TABLES)
        sqlite_store = SqliteJournalStore(target.value, signing_key="")
        try:
            await sqlite_store.list_sessions(limit=1)  # opening the file makes or migrates tables
        finally:
            await sqlite_store.aclose()
        return existed
    store = await _connect(target, "", None)
    try:
        _, existed = await store.schema_ready()
        await store.init_schema()
    finally:
        await store.aclose()
    return existed


async def _connect(
    target: Target, signing_key: str | None, codec: str | Codec | None
) -> PostgresJournalStore:
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            return await PostgresJournalStore.connect(
                target.value, min_size=1, max_size=2, codec=codec, signing_key=signing_key
            )
    except ImportError as exc:  # no asyncpg: the message says what to install
        raise CliError(f"cannot open {target.shown}: {exc}") from None
    except TimeoutError:
        raise CliError(
            f"cannot connect to PostgreSQL at {target.shown}: "
            f"no answer within {CONNECT_TIMEOUT:g} s"
        ) from None
    except (StoreError, ValueError) as exc:
        cause = exc.__cause__ or exc
        raise CliError(
            f"cannot connect to PostgreSQL at {target.shown}: {type(cause).__name__}: {cause}"
        ) from None


async def _check_pg_tables(store: PostgresJournalStore, target: Target) -> None:
    schema, ok = await store.schema_ready()
    if not ok:
        raise CliError(
            f"no jeevesagent journal tables at {target.shown} (schema {schema!r}): create them "
            "once with `jeevesagent-runtime init-schema` (or `await store.init_schema()`, or "
            "apply PostgresJournalStore.schema_sql()), and check the search_path"
        )

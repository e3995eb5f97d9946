"""What the SQL stores' schemas share: the migration plan (:class:`Migrations`: which ordered
steps a database at some version still needs, refusing one that a newer jeevesagent migrated)
and the jeevesagent 0.9.7 import (which old tables, copied under which keys, and the sessions
rows the imported sessions get). Each store runs the plan its own way -- SQLite synchronously in
one ``BEGIN IMMEDIATE`` transaction on its thread, Postgres in one transaction under an advisory
lock -- and words the import in its own dialect around these statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from .._core.keys import LEGACY
from .._errors import JournalCorruptError
from .._journal.rows import STEP, STREAM

__all__ = ["IMPORTED_SESSIONS", "LEGACY_TABLES", "Migrations", "legacy_rows"]

S = TypeVar("S")


class Migrations(Generic[S]):
    """Ordered migrations: ``steps[i]`` brings a schema from version ``i`` to ``i + 1``.

    :param steps: each migration's steps (statements, or whatever the store knows how to run)
    :param verb: what an outdated jeevesagent is asked to upgrade for ("open", "use")
    """

    def __init__(self, steps: Sequence[Sequence[S]], verb: str) -> None:
        self.steps = steps
        self.verb = verb

    @property
    def version(self) -> int:
        """The version the migrations bring a schema to: the current one."""
        return len(self.steps)

    def pending(self, version: int) -> list[tuple[int, Sequence[S]]]:
        """The migrations a schema at ``version`` lacks, in order, each with the version it
        reaches (to record once its steps ran).

        :raises JournalCorruptError: ``version`` is newer than this code knows
        """
        if version > self.version:
            raise JournalCorruptError(
                f"the journal's schema is version {version}, newer than this jeevesagent "
                f"understands ({self.version}); upgrade jeevesagent to {self.verb} it."
            )
        return [(v + 1, self.steps[v]) for v in range(version, self.version)]


# -- the jeevesagent 0.9.7 import (schema version 3) ---------------------------------------------
#: The old tables (where they exist), the kind of row each held, and its value column.
LEGACY_TABLES = (("journal_steps", STEP, "value"), ("journal_streams", STREAM, "chunks"))


def legacy_rows(table: str, kind: int, column: str) -> str:
    """A query of one old table's rows as journal rows: imported keys, bytes and times
    unchanged (the store inserts them, ignoring keys already journaled)."""
    return f"SELECT session_id, {kind}, '{LEGACY}' || step_name, {column}, created_at FROM {table}"


#: A query of the sessions row each imported session gets (status ``imported``): only the
#: import writes keys of the legacy namespace. The store inserts them where a session has none.
IMPORTED_SESSIONS = (
    "SELECT session_id, 'imported', NULL, NULL, min(created_at), max(created_at), count(*) "
    f"FROM jrt_journal WHERE substr(key, 1, {len(LEGACY)}) = '{LEGACY}' "
    "GROUP BY session_id"
)

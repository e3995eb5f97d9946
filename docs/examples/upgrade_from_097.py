"""Upgrading from jeevesagent 0.9.7: its journal opens without loss and its steps replay.

Run it with ``python docs/examples/upgrade_from_097.py``. It first writes a journal exactly as
0.9.7 did (tables ``journal_steps`` and ``journal_streams``, pickled values, plain step names as
keys), then opens it with the current runtime.
"""

import contextlib
import pickle
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from jeevesagent.runtime import SqliteRuntime


def write_097_journal(path: Path) -> None:
    """What jeevesagent 0.9.7's SqliteJournalStore left on disk after a crashed run."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # closed, after a commit
        db.execute(
            "CREATE TABLE journal_steps (session_id TEXT NOT NULL, step_name TEXT NOT NULL, "
            "value BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (session_id, step_name))"
        )
        db.execute(
            "CREATE TABLE journal_streams (session_id TEXT NOT NULL, step_name TEXT NOT NULL, "
            "chunks BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (session_id, step_name))"
        )
        now = time.time()
        db.execute(
            "INSERT INTO journal_steps VALUES (?, ?, ?, ?)",
            ("trip-7", "plan", pickle.dumps("fly to Lisbon"), now),
        )
        db.execute(
            "INSERT INTO journal_streams VALUES (?, ?, ?, ?)",
            ("trip-7", "reply", pickle.dumps(["Booking ", "your ", "trip."]), now),
        )


ran: list[str] = []


async def plan(goal: str) -> str:
    ran.append("plan")
    return f"a new plan for {goal}"


async def reply() -> AsyncIterator[str]:
    ran.append("reply")
    yield "a new reply"


async def book(plan_text: str) -> str:
    ran.append("book")
    return f"booked: {plan_text}"


async def main(path: Path) -> None:
    write_097_journal(path)
    # Opening the file applies the schema migrations: the 0.9.7 rows are copied into the new
    # journal (the old tables stay untouched), and each old session is listed as "imported".
    async with SqliteRuntime(path) as rt:
        print([(s.session_id, s.status, s.steps) for s in await rt.list_sessions()])
        async with rt.session("trip-7"):
            # Called by the same names as in 0.9.7: recorded steps replay, new ones run.
            plan_text = await rt.step("plan", plan, "a holiday")
            chunks = [c async for c in rt.stream_step("reply", reply)]
            booking = await rt.step("book", book, plan_text)
    print(plan_text, "|", "".join(chunks), "|", booking)
    assert ran == ["book"], ran  # only the step 0.9.7 had not recorded ran


with tempfile.TemporaryDirectory() as tmp:
    anyio.run(main, Path(tmp) / "journal.sqlite3")

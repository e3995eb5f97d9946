"""Safe values: a signed journal refuses rows it did not sign, and a JSON journal stays readable.

Run it with ``python docs/examples/security.py``. The journal lives in a temporary directory.
"""

import contextlib
import json
import pickle
import sqlite3
import tempfile
from pathlib import Path

import anyio

from jeevesagent.runtime import JournalIntegrityError, SqliteRuntime

# In production: a long random secret from your secret store, passed as signing_key= or set in
# the JEEVESAGENT_SIGNING_KEY environment variable of every worker.
KEY = "3f1c0e8d9b2a47e6a1d5c3b9f0e7d2a4"


async def lookup(user: str) -> dict[str, str]:
    return {"user": user, "plan": "pro"}


class Planted:
    """What an attacker with write access to the database might plant: unpickling it runs code."""

    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("!!! the planted row ran code",))


async def main(folder: Path) -> None:
    path = folder / "journal.sqlite3"

    # 1. A signed, JSON-encoded journal.
    async with SqliteRuntime(path, codec="json", signing_key=KEY) as rt, rt.session("user-7"):
        await rt.step("lookup", lookup, "ada")

    # Any tool can read the values: each is "\x00jrt1" + a 32-byte tag + plain JSON.
    with contextlib.closing(sqlite3.connect(path)) as db:
        (value,) = db.execute(
            "SELECT value FROM jrt_journal WHERE session_id = 'user-7'"
        ).fetchone()
    print("stored:", json.loads(value[5 + 32 :]))

    # 2. Someone with write access to the database swaps the recorded value for a pickle.
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # closed, after a commit
        db.execute("UPDATE jrt_journal SET value = ?", (pickle.dumps(Planted()),))

    # 3. The runtime refuses the row before decoding it: the planted code never runs, and the step
    #    does not silently run again either.
    async with SqliteRuntime(path, codec="json", signing_key=KEY) as rt, rt.session("user-7"):
        try:
            await rt.step("lookup", lookup, "ada")
        except JournalIntegrityError as exc:
            print(f"refused ({type(exc).__name__}): {exc}")
        else:
            raise AssertionError("the tampered row was accepted")


with tempfile.TemporaryDirectory() as tmp:
    anyio.run(main, Path(tmp))

"""What every contestant's worker shares: the workload's data, the step body, and the pipe.

Standard library only: a peer's worker imports this module in the peer's own virtualenv, next
to nothing of ours. A worker reads one JSON request a line on stdin, runs it on a fresh event
loop, and answers one JSON line on stdout: ``{"ok": true, "metrics": {...}}`` or
``{"ok": false, "error": "..."}``. Everything else a worker or its library prints goes to
stderr, so stdout carries only the answers.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pathlib
import sys
import time
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = [
    "CHUNKS",
    "Calls",
    "Handler",
    "elapsed_us",
    "expect",
    "fresh_name",
    "now_ns",
    "producer",
    "remove_sqlite",
    "serve",
    "settle",
    "step_body",
    "with_database",
]

now_ns = time.perf_counter_ns
# The stream workload: 200 chunks of 50 bytes (the same as benchmarks/workloads.py).
CHUNKS = [f"chunk {i:04d} ".encode().ljust(50, b".") for i in range(200)]
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Calls:
    """How many times the step body and the stream producer really ran in this process."""

    step = 0
    stream = 0


def step_body(arg: dict[str, Any]) -> dict[str, Any]:
    """The work of one small step: a small dict in, a small dict out."""
    Calls.step += 1
    return {"i": arg["i"], "text": arg["text"], "ok": True}


async def producer() -> AsyncIterator[bytes]:
    Calls.stream += 1
    for chunk in CHUNKS:
        yield chunk


def expect(what: str, got: int, want: int) -> None:
    """Check that the contestant did the work that was measured (a benchmark, not a test)."""
    if got != want:
        raise RuntimeError(f"{what}: expected {want}, got {got}")


def settle() -> None:
    """Collect garbage left by setup so it is not collected inside a timed section."""
    gc.collect()


def elapsed_us(start: int, count: int) -> float:
    """µs per item since ``start`` (a ``now_ns`` reading)."""
    return (now_ns() - start) / count / 1000


_names = iter(range(1, 1 << 62))


def fresh_name(prefix: str) -> str:
    """A name no other request of this run uses (for a SQLite file or a Postgres database)."""
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def with_database(dsn: str, database: str) -> str:
    """``dsn`` (a ``postgresql://`` URI) with its database replaced by ``database``."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def remove_sqlite(path: str) -> None:
    """Remove a SQLite database file and its companions."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)


def serve(handlers: dict[str, Handler]) -> None:
    """Answer requests until stdin closes. ``handlers[request["op"]]`` does the work."""
    out = sys.stdout
    sys.stdout = sys.stderr  # a library's print() must not corrupt the answers
    for line in sys.stdin:
        request = json.loads(line)
        try:
            metrics = asyncio.run(handlers[request["op"]](request))
            answer: dict[str, Any] = {"ok": True, "metrics": metrics}
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()

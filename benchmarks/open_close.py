"""Instructions spent opening and closing a session, for ``valgrind --tool=callgrind``.

Records one session of ``--steps`` steps, then opens and closes it ``--opens`` times in one
runtime (each open bulk-loads the whole journal; no step runs). Run it twice under callgrind,
with ``--opens 0`` and with ``--opens N``: the difference of the two instruction totals over N
is the client-side CPU of one open+close (the Postgres server is another process, not counted).

    valgrind --tool=callgrind --callgrind-out-file=/tmp/oc0 python benchmarks/open_close.py \\
        --store sqlite --opens 0
    valgrind --tool=callgrind --callgrind-out-file=/tmp/oc100 python benchmarks/open_close.py \\
        --store sqlite --opens 100

For Postgres set ``JEEVESAGENT_BENCH_PG_DSN`` to a running server (started outside valgrind).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid

import anyio

from jeevesagent.runtime import JournaledRuntime, PostgresRuntime, SqliteRuntime


async def _value(i: int) -> int:
    return i


async def main(store: str, steps: int, opens: int, journal: str) -> None:
    rt: JournaledRuntime
    if store == "sqlite":
        rt = SqliteRuntime(journal)
    else:
        rt = await PostgresRuntime.connect(journal)
        await rt.init_schema()
    async with rt:
        async with rt.session("bench"):
            for i in range(steps):
                await rt.step(f"s{i}", _value, i)
        for _ in range(opens):
            async with rt.session("bench"):
                pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--opens", type=int, default=100)
    a = p.parse_args()
    if a.store == "sqlite":
        where = os.path.join(tempfile.mkdtemp(prefix="jeevesagent-oc-"), "journal.sqlite3")
    else:
        dsn = os.environ["JEEVESAGENT_BENCH_PG_DSN"]
        schema = "oc_" + uuid.uuid4().hex[:8]
        sep = "&" if "?" in dsn else "?"
        where = f"{dsn}{sep}search_path={schema}"

        async def make() -> None:
            import asyncpg  # the schema must exist before the store looks at it

            conn = await asyncpg.connect(dsn)
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.close()

        anyio.run(make)
    anyio.run(main, a.store, a.steps, a.opens, where, backend=a.backend)

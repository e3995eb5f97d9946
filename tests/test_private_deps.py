"""The few private attributes of dependencies the package relies on, checked against the
installed versions so that a release that changes them fails here, loudly, instead of in a
user's process. Each is pinned by a version range in pyproject.toml.

asyncpg (``asyncpg>=0.32,<0.33``): the Postgres store's LISTEN connection is opened with the
pool's own connect function and arguments (``pglisten.Listener._connect``), so it is a connection
to the same server with the same settings but not one of the pool's (holding a pool connection
forever would starve a pool of size 1); and a pool passed in is driven on its own loop
(``pool._loop``). asyncpg has no public API for either.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from .conftest import pg

POOL_ATTRIBUTES = (
    "_connect",
    "_connect_args",
    "_connect_kwargs",
    "_loop",
    "_connection_class",
    "_record_class",
)


@pytest.mark.postgres
def test_the_asyncpg_pool_attributes_the_listener_uses_exist(pg_dsn: str) -> None:
    import asyncpg

    async def check(conn: Any) -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            missing = [name for name in POOL_ATTRIBUTES if not hasattr(pool, name)]
            assert missing == [], f"asyncpg {asyncpg.__version__} changed: {missing}"
            params = inspect.signature(pool._connect).parameters
            for name in ("loop", "connection_class", "record_class"):
                assert name in params, f"asyncpg {asyncpg.__version__}: _connect({name}=) is gone"
        finally:
            await pool.close()

    pg(pg_dsn, check)

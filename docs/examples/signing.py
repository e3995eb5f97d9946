"""A signed journal: every row carries a keyed BLAKE2b tag and a row that does not verify is
refused before it is decoded. Run it with ``python docs/examples/signing.py``.
"""

import anyio

from jeevesagent.runtime import SqliteRuntime


async def main() -> None:
    key = "use a long random secret from your secret store"  # >= 16 bytes
    async with SqliteRuntime("signed.sqlite3", signing_key=key) as rt, rt.session("user-7"):
        await rt.step("lookup", lambda: {"plan": "pro"})


anyio.run(main)

"""A session as a DBOS workflow: ``pip install 'jeevesagent[dbos]'``, then
``python docs/examples/dbos_session.py`` (twice: the second run replays from DBOS's records).

The system database is a SQLite file here (``sqlite:///dbos_example.sqlite3``, or
``$JEEVESAGENT_DBOS_SYSTEM_DB``); a Postgres URL
works the same. DBOS's own tools see the session and its steps:
``dbos workflow list -s sqlite:///dbos_example.sqlite3`` and
``dbos workflow steps -s sqlite:///dbos_example.sqlite3 order-7``.
"""

from __future__ import annotations

import asyncio
import os

from jeevesagent.runtime import DBOSRuntime


async def quote(item: str) -> float:
    print(f"quoting {item}")
    return 12.5


async def charge(amount: float) -> str:
    print(f"charging {amount}")
    return "receipt-1"


async def main() -> None:
    url = os.environ.get("JEEVESAGENT_DBOS_SYSTEM_DB", "sqlite:///dbos_example.sqlite3")
    async with DBOSRuntime(url, config={"log_level": "WARNING"}) as rt:
        async with rt.session("order-7"):
            price = await rt.step("quote", quote, "lamp")
            # A step's arguments are part of its identity; an idempotency key names it alone.
            receipt = await rt.step("charge", charge, price, idempotency_key="order-7-charge")
            await rt.sleep("cool-off", 0.1)  # durable: a resumed session sleeps what is left
        print(f"{price=} {receipt=}")


if __name__ == "__main__":
    asyncio.run(main())

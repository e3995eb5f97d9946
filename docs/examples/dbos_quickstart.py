"""A session kept by DBOS (docs/guides/integrations.md). Needs the [dbos] extra."""

# -- example --
import asyncio
import os

from jeevesagent.runtime import DBOSRuntime


async def quote(item: str) -> float:
    return 12.5


async def main() -> None:
    # A SQLite file, or a Postgres URL (DBOS creates the database).
    url = os.environ.get("JEEVESAGENT_DBOS_SYSTEM_DB", "sqlite:///dbos.sqlite3")
    async with DBOSRuntime(url, config={"log_level": "WARNING"}) as rt:
        async with rt.session("order-7"):
            price = await rt.step("quote", quote, "lamp")
            await rt.sleep("cool-off", 0.1)
        print(price)


asyncio.run(main())

"""A session kept by DBOS (docs/guides/integrations.md). Needs the [dbos] extra."""

# -- example --
import asyncio

from jeevesagent.runtime import DBOSRuntime


async def quote(item: str) -> float:
    return 12.5


async def main() -> None:
    async with DBOSRuntime("sqlite:///dbos.sqlite3", config={"log_level": "WARNING"}) as rt:
        async with rt.session("order-7"):
            price = await rt.step("quote", quote, "lamp")
            await rt.sleep("cool-off", 0.1)
        print(price)


asyncio.run(main())

"""A durable pydantic-ai agent (docs/guides/integrations.md). Needs the [pydantic-ai] extra."""

# -- example --
import anyio
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from jeevesagent.runtime import SqliteRuntime
from jeevesagent.runtime.pydantic_ai import Durability

agent = Agent(TestModel(), name="support", capabilities=[Durability()])


@agent.tool_plain
def lookup(order: str) -> str:
    return f"order {order} shipped"  # a completed call is never made again for this run


async def main() -> None:
    async with SqliteRuntime("journal.sqlite3") as rt:
        async with rt.session("ticket-42"):  # or inside a @workflow body
            result = await agent.run("where is my order?")
        print(result.output)


anyio.run(main)  # asyncio: pydantic-ai does not run under trio

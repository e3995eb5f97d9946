import anyio

from jeevesagent.runtime import SqliteRuntime


async def call_model(prompt: str) -> str:
    return f"a plan for: {prompt}"  # a paid API call in real life


async def send_email(to: str, body: str) -> bool:
    return True  # a side effect that must not happen twice


async def main() -> None:
    async with SqliteRuntime("journal.sqlite3") as rt, rt.session("order-42"):
        plan = await rt.step("plan", call_model, "ship order 42")
        await rt.step("email", send_email, "ada@example.com", plan)


anyio.run(main)  # or anyio.run(main, backend="trio")

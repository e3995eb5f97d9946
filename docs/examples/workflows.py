"""A registered workflow run inline, started for a worker, cancelled, read from any
process and forked from a step. Run it with ``python docs/examples/workflows.py`` (the journal
is ``orders.sqlite3`` in the current folder: a second run replays).
"""

import uuid

import anyio

from jeevesagent.runtime import SessionCancelledError, SqliteRuntime, current_runtime, workflow


async def call_model(prompt: str) -> str:
    return f"a plan for: {prompt}"  # a paid API call in real life


async def send_email(to: str, body: str) -> bool:
    return True  # a side effect that must not happen twice


@workflow(name="orders.ship")  # the name recorded with each session
async def ship(order: str, to: str) -> str:
    rt = current_runtime()  # the runtime running this session
    plan = await rt.step("plan", call_model, f"ship {order}")
    await rt.step("email", send_email, to, plan)
    return plan


async def main() -> None:
    async with SqliteRuntime("orders.sqlite3") as rt:
        # Inline, in this task: records the name and arguments, then the result.
        print(await rt.run(ship, "order-42", "order 42", "ada@example.com"))

        # For a worker: start() records a pending session and returns a handle at once.
        handle = await rt.start(ship, "order-43", "order 43", "bob@example.com")
        doomed = await rt.start(ship, "order-44", "order 44", "eve@example.com")
        await doomed.cancel()  # final: a pending session never starts
        async with anyio.create_task_group() as tg:
            await tg.start(rt.serve, ship)  # a worker, in your own task group
            print(await handle.result())  # from any process: await rt.result("order-43")
            try:
                await rt.result("order-44")
            except SessionCancelledError:
                print("order-44:", await doomed.status())
            # A new session: order-42's arguments and its journal before the step "email".
            # "plan" replays from the copy; "email" runs again.
            fork = await rt.fork("order-42", f"order-42-{uuid.uuid4().hex[:6]}", at="email")
            print(await fork.result())
            tg.cancel_scope.cancel()  # stop the worker


anyio.run(main)  # or anyio.run(main, backend="trio")

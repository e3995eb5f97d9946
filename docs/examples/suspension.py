"""Human-in-the-loop with suspension: a workflow waits days for an approval signal without
holding a task, a claim or a connection. Run it with ``python docs/examples/suspension.py``
(``suspend_after=0.5`` so that it suspends at once; the default is 60 s).
"""

from functools import partial

import anyio

from jeevesagent.runtime import SqliteRuntime, current_runtime, workflow


async def book_expense(amount: int, answer: str) -> str:
    return f"{amount} {answer}"  # a side effect that must not happen twice


@workflow(name="expenses.approve")
async def approve(amount: int) -> str:
    rt = current_runtime()
    claim = str(rt.current_session_id())
    try:  # the deadline is journaled: it holds
        answer = await rt.wait_for_signal(claim, "decision", timeout=7 * 86400)
    except TimeoutError:  # across suspension and restarts
        return "expired"
    return await rt.step("book", book_expense, amount, answer)


async def main() -> None:
    async with SqliteRuntime("expenses.sqlite3") as rt, anyio.create_task_group() as tg:
        await tg.start(partial(rt.serve, approve, suspend_after=0.5))  # default: 60 s
        handle = await rt.start(approve, "claim-7", 120)
        while await handle.status() in ("pending", "running"):  # noqa: ASYNC110 - a status
            await anyio.sleep(0.1)  # in the store; then suspended: "waiting", holding nothing
        print(await handle.status())
        await rt.signal("claim-7", "decision", "approved")  # any process, or the CLI
        print(await handle.result())  # a worker ran it again: 120 approved
        tg.cancel_scope.cancel()


anyio.run(main)

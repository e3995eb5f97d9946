"""A worker that turns SIGTERM (a deploy, ``docker stop``) and Ctrl+C into a cancellation of
its task group: the sessions it was running end ``interrupted``, for the next worker. Run it
with ``python docs/examples/worker_sigterm.py``: it sends itself SIGTERM once its work is done.
"""

import os
import signal

import anyio

from jeevesagent.runtime import SqliteRuntime, current_runtime, workflow


@workflow(name="orders.charge")
async def charge(order: str) -> str:
    rt = current_runtime()
    receipt = await rt.step("charge", lambda: f"receipt for {order}")
    await rt.sleep("cool-off", 0.1)  # a durable sleep: a resumed run sleeps what is left
    return receipt


async def stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()  # cancels serve(): its sessions end "interrupted"
            return


async def main() -> None:
    async with SqliteRuntime("worker.sqlite3") as rt, anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, tg.cancel_scope)
        tg.start_soon(rt.serve, charge)  # until SIGTERM: a deploy, `docker stop`, Ctrl+C
        await rt.start(charge, "order-7", "order 7")  # usually another process starts work
        print(await rt.result("order-7"))
        os.kill(os.getpid(), signal.SIGTERM)  # what a deploy does (so this example ends)


anyio.run(main)  # or anyio.run(main, backend="trio")

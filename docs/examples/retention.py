"""Retention: prune whole sessions by age, status or id. Run it with
``python docs/examples/retention.py``.
"""

import anyio

from jeevesagent.runtime import SqliteRuntime


async def main() -> None:
    async with SqliteRuntime("orders.sqlite3") as rt:
        async with rt.session("order-1"):
            await rt.step("charge", lambda: "charged")
        result = await rt.prune(older_than=30 * 86400, status=["completed", "failed"])
        print("pruned", result.pruned, "still running", result.skipped)
        await rt.prune(sessions=["order-1"])  # one session, whatever its age


anyio.run(main)

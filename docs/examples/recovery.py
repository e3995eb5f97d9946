"""Start-up recovery of plain sessions (no workflow): resume each orphaned or interrupted
session, skipping one another worker has just opened, then take new work. Run it with
``python docs/examples/recovery.py``.
"""

import anyio

from jeevesagent.runtime import SessionBusyError, SqliteRuntime


async def run_order(rt: SqliteRuntime, session_id: str) -> None:
    async with rt.session(session_id):
        await rt.step("charge", lambda: "charged")


async def main() -> None:
    async with SqliteRuntime("orders.sqlite3") as rt:
        for info in await rt.orphaned_sessions():  # also: await rt.list_sessions(status="failed")
            try:
                await run_order(rt, info.session_id)
            except SessionBusyError:
                continue  # another worker is resuming it
        await run_order(rt, "order-43")  # then the new work


anyio.run(main)

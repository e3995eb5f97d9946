"""Human-in-the-loop in a plain session: the agent drafts a refund, then waits for a person's
decision, sent as a signal -- here by another task; in real life by a web handler, another
process or ``jeevesagent-runtime signal refund-9 decision '"approve"'``.

The receipt of the signal is journaled, so a second run of the session replays the decision
without waiting, and the refund is not paid twice. Run it with
``python docs/examples/approval.py`` (the journal is ``approvals.sqlite3`` in the current folder:
run it twice).
"""

import anyio

from jeevesagent.runtime import SqliteRuntime

paid: list[str] = []


async def draft(order: str) -> str:
    return f"refund 30 EUR for {order}"  # a model call in real life


async def pay(text: str) -> str:
    paid.append(text)  # must happen once
    return "paid"


async def agent(rt: SqliteRuntime) -> str:
    async with rt.session("refund-9"):
        proposal = await rt.step("draft", draft, "order 9")
        print("waiting for a decision on:", proposal)
        try:
            decision = await rt.wait_for_signal("refund-9", "decision", timeout=3600)
        except TimeoutError:  # journaled too: a replay takes the same branch
            return "expired"
        if decision != "approve":
            return f"refused ({decision})"
        return await rt.step("pay", pay, proposal)


async def person(rt: SqliteRuntime) -> None:
    await anyio.sleep(0.2)  # a person reads the proposal
    await rt.signal("refund-9", "decision", "approve")  # committed to the session's mailbox


async def main() -> None:
    async with SqliteRuntime("approvals.sqlite3") as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(person, rt)
            print("outcome:", await agent(rt))
        # A signal sent before its session runs is kept in the mailbox; once the session is
        # open, poll_signal (synchronous) takes it without waiting, or returns None.
        await rt.signal("refund-10", "decision", "refuse")
        async with rt.session("refund-10"):
            print("refund-10:", rt.poll_signal("refund-10", "decision"))


anyio.run(main)

"""A child process for the crash tests: runs session ``argv[3]`` on the Temporal server at
``argv[1]`` (task queue ``argv[2]``), appending each step it really runs to the file ``argv[4]``;
with ``argv[5] == "crash"`` it kills itself with SIGKILL inside step ``charge``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from jeevesagent.runtime import TemporalRuntime


async def main(target: str, task_queue: str, sid: str, log: str, mode: str) -> None:
    rt = await TemporalRuntime.connect(target, task_queue=task_queue, sticky_timeout=0.5)

    def ran(name: str) -> None:
        with open(log, "a") as f:
            f.write(name + "\n")

    async def plan(request: str) -> str:
        ran("plan")
        return f"plan for {request}"

    async def charge(amount: int) -> str:
        ran("charge")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return f"charged {amount}"

    async def notify(text: str) -> str:
        ran("notify")
        return f"sent: {text}"

    async with rt, rt.session(sid, wait=30):
        p = await rt.step("plan", plan, "Lisbon")
        c = await rt.step("charge", charge, 120)
        approval = await rt.wait_for_signal(sid, "approve", timeout=30)
        n = await rt.step("notify", notify, f"{p}; {c}; {approval}")
    print(n, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort the interpreter at exit (sdk-python issue 300)

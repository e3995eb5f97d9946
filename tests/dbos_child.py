"""A child process of tests/test_dbos.py: one DBOS configuration per process (DBOS is a
per-process singleton). ``python tests/dbos_child.py SCENARIO SYSTEM_DATABASE_URL``; prints
``RAN <step>`` for each step body that runs and ``OK`` at the end of a scenario that passed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from jeevesagent.runtime import DBOSRuntime, JournalMismatchError, RuntimeJournalError

SCENARIOS: dict[str, Any] = {}


def scenario(fn: Any) -> Any:
    SCENARIOS[fn.__name__] = fn
    return fn


async def work(name: str, value: Any = None) -> Any:
    print(f"RAN {name}", flush=True)
    return {"step": name, "value": value}


async def flaky(name: str) -> Any:
    print(f"RAN {name}", flush=True)
    raise ValueError(f"{name} failed")


def mentions(exc: BaseException, *words: str) -> None:
    missing = [w for w in words if w not in str(exc)]
    if missing:
        raise AssertionError(f"{exc!r} does not mention {missing}")


def expect(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


@scenario
async def basics(rt: DBOSRuntime) -> None:
    async with rt.session("basics") as session:
        expect("session id", session.id, "basics")
        first = await rt.step("plan", work, "plan", 1)
        expect("same key again in the run", await rt.step("plan", work, "plan", 1), first)
        await rt.step("plan", work, "plan-2", 2)  # same name, other arguments: runs
        await rt.step("email", work, "keyed", idempotency_key="mail-1")
        await rt.step("email-again", work, "keyed-2", idempotency_key="mail-1")  # deduped
        try:
            await rt.step("flaky", flaky, "flaky")
        except ValueError:
            pass
        else:
            raise AssertionError("the step's exception did not come out")
        chunks = [c async for c in rt.stream_step("stream", lambda: iter(["a", "b"]))]
        expect("stream chunks", chunks, ["a", "b"])
        await rt.signal("basics", "approve", None)  # None is a payload, not a timeout
        expect("signal", await rt.wait_for_signal("basics", "approve", timeout=10), None)
        await session.deliver("approve", {"ok": True})
        expect("deliver", await rt.wait_for_signal("basics", "approve", timeout=10), {"ok": True})
        try:
            await rt.wait_for_signal("basics", "nothing", timeout=0.05)
        except TimeoutError:
            pass
        else:
            raise AssertionError("no TimeoutError")
        await rt.sleep("nap", 0.01)
        try:
            rt.poll_signal("basics", "approve")
        except RuntimeJournalError as exc:
            mentions(exc, "wait_for_signal")
        else:
            raise AssertionError("poll_signal did not refuse")
    # Completed in DBOS: the session opens replay-only; its steps replay, a new one is refused.
    async with rt.session("basics"):
        expect("replayed", await rt.step("plan", work, "plan", 1), first)
        replayed = [c async for c in rt.stream_step("stream", lambda: iter(["x"]))]
        expect("replayed stream", replayed, ["a", "b"])
        try:
            await rt.step("new", work, "new")
        except JournalMismatchError as exc:
            mentions(exc, "'basics'", "'new'")
        else:
            raise AssertionError("a new step ran in a finished session")
    print("OK", flush=True)


@scenario
async def raise_then_resume(rt: DBOSRuntime) -> None:
    try:
        async with rt.session("fails"):
            await rt.step("a", work, "a")
            raise KeyError("body failed")
    except KeyError:
        pass
    async with rt.session("fails"):  # PENDING in DBOS: resumed, "a" replays
        await rt.step("a", work, "a")
        await rt.step("b", work, "b")
    print("OK", flush=True)


@scenario
async def diverge(rt: DBOSRuntime) -> None:
    try:
        async with rt.session("diverge"):
            await rt.step("a", work, "a", 1)
            raise KeyError("stop")
    except KeyError:
        pass
    try:
        async with rt.session("diverge"):
            await rt.step("a", work, "a", 2)  # other arguments at the same position
    except JournalMismatchError as exc:
        mentions(exc, "'diverge'", "'a'")
        print("OK", flush=True)


@scenario
async def crash(rt: DBOSRuntime) -> None:
    async with rt.session("crash"):
        await rt.step("a", work, "a")
        print("WAITING", flush=True)
        await asyncio.sleep(60)  # the parent kills this process here


@scenario
async def send(rt: DBOSRuntime) -> None:
    await rt.signal("crash", "approve", {"by": "ann"})
    print("OK", flush=True)


@scenario
async def resume(rt: DBOSRuntime) -> None:
    async with rt.session("crash"):
        await rt.step("a", work, "a")
        got = await rt.wait_for_signal("crash", "approve", timeout=30)
        print(f"GOT {got['by']}", flush=True)
        await rt.step("b", work, "b")
    async with rt.session("crash"):  # completed: replays the receipt, no wait
        await rt.step("a", work, "a")
        await rt.step("b", work, "b")
    print("OK", flush=True)


@scenario
def trio_refused(rt: DBOSRuntime) -> None:
    import trio

    async def go() -> None:
        try:
            async with rt.session("t"):
                pass
        except RuntimeError as exc:
            mentions(exc, "asyncio", "SqliteRuntime")
            print("OK", flush=True)

    trio.run(go)


def main() -> None:
    name, url = sys.argv[1], sys.argv[2]
    rt = DBOSRuntime(url, config={"log_level": "WARNING"})
    if name == "trio_refused":
        SCENARIOS[name](rt)
        return

    async def run() -> None:
        async with rt:
            await SCENARIOS[name](rt)

    asyncio.run(run())


if __name__ == "__main__":
    main()

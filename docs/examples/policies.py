"""Step policies: retries and timeouts, journaled failures, strict replay and a durable sleep.

Run it with ``python docs/examples/policies.py`` (about half a second; the journal lives in a
temporary directory, so every run starts afresh and replays inside the run).
"""

import tempfile
from pathlib import Path

import anyio

from jeevesagent.runtime import (
    JournaledRuntime,
    JournalMismatchError,
    RetryPolicy,
    SqliteJournalStore,
    StepPolicy,
    with_policy,
)

calls = {"search": 0, "charge": 0}


async def search(query: str) -> list[str]:
    calls["search"] += 1
    if calls["search"] == 1:
        raise ConnectionError("flaky network")  # the first try fails, the retry succeeds
    return [f"LIS-{query}"]


async def charge(card: str) -> str:
    calls["charge"] += 1
    raise ValueError(f"card {card} declined")  # fails for good


# Up to 3 tries with backoff, at most 5 s per try; the step is recorded once, when a try succeeds.
search_step = with_policy(
    search, retry=RetryPolicy(attempts=3, initial_delay=0.01, jitter=0), timeout=5.0
)
# A failure for good is journaled: the next run raises it again without charging again.
charge_step = with_policy(charge, journal_failures=True)


async def workflow(rt: JournaledRuntime, query: str) -> list[str]:
    async with rt.session("trip-7"):
        flights: list[str] = await rt.step("search", search_step, query)
        try:
            await rt.step("charge", charge_step, "4242")
        except ValueError as exc:
            print("  charge failed:", exc)
        await rt.sleep("cool-off", 0.2)  # durable: after a restart, only what is left is slept
        return flights


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteJournalStore(Path(tmp) / "journal.sqlite3") as store:
            # A default policy for every step of the runtime; with_policy overrides it per field.
            defaults = StepPolicy(timeout=30.0)
            for run in (1, 2):  # the second run replays: nothing runs again, nothing sleeps
                async with JournaledRuntime(store, policy=defaults, strict=True) as rt:
                    start = anyio.current_time()
                    flights = await workflow(rt, "flights")
                    took = anyio.current_time() - start
                    print(f"run {run}: {flights} in {took:.2f} s, calls so far: {calls}")
            assert calls == {"search": 2, "charge": 1}

            # Strict replay: a recorded step name called with other arguments is a mismatch.
            async with JournaledRuntime(store, strict=True) as rt, rt.session("trip-7"):
                try:
                    await rt.step("search", search_step, "hotels")
                except JournalMismatchError as exc:
                    print("strict replay:", exc)
                else:
                    raise AssertionError("expected JournalMismatchError")
            assert calls["search"] == 2


anyio.run(main)

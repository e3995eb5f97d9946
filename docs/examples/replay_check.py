"""check_replay: run a workflow, then again interrupted after each recorded step and resumed,
and catch one that does not replay deterministically. Run it with
``python docs/examples/replay_check.py``; in your tests, ``await`` it in an ``async def test_``.
"""

import random

import anyio

from jeevesagent.runtime import current_runtime, workflow
from jeevesagent.runtime.testing import ReplayCheckError, check_replay


async def quote(item: str) -> int:
    return len(item) * 10  # a test double of a priced API


@workflow(name="shop.total")
async def total(items: list[str]) -> int:
    rt = current_runtime()
    prices = [await rt.step(f"quote_{i}", quote, item) for i, item in enumerate(items)]
    return sum(prices)


@workflow(name="shop.lucky")
async def lucky() -> int:
    rt = current_runtime()
    await rt.step("first", quote, "a")
    return await rt.step("draw", quote, random.choice(["b", "cc"]))  # decided outside a step


async def main() -> None:
    assert await check_replay(total, ["tea", "cake"]) == 70
    try:
        await check_replay(lucky)  # caught whenever a resumed run draws another item
    except ReplayCheckError as exc:
        print("not deterministic:", exc)


anyio.run(main)

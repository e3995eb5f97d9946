"""``jeevesagent.runtime.testing.check_replay``: a helper for users' own workflows."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from jeevesagent.runtime import current_runtime, workflow
from jeevesagent.runtime.testing import ReplayCheckError, check_replay

TICKS = itertools.count()


async def double(x: int) -> int:
    return 2 * x


async def words(text: str) -> Any:
    for word in text.split():
        yield word


@workflow(name="test.check_replay.good")
async def good(x: int) -> dict[str, Any]:
    rt = current_runtime()
    doubled = await rt.step("double", double, x)
    chunks = [w async for w in rt.stream_step("words", words, "a b c")]
    await rt.sleep("nap", 0)
    again = await rt.step("double_again", double, doubled, idempotency_key=f"d-{doubled}")
    return {"doubled": doubled, "chunks": chunks, "again": again}


@workflow(name="test.check_replay.clock")
async def clock() -> int:
    rt = current_runtime()
    await rt.step("first", double, 1)
    return await rt.step("second", double, next(TICKS))  # an argument that changes every run


@workflow(name="test.check_replay.branchy")
async def branchy() -> str:
    rt = current_runtime()
    await rt.step("first", double, 1)
    if next(TICKS) % 2:  # a decision outside any step: another path on a replay
        await rt.step("odd", double, 2)
    else:
        await rt.step("even", double, 3)
    return "done"


async def test_a_deterministic_workflow_passes_and_returns_its_result() -> None:
    assert await check_replay(good, 4) == {"doubled": 8, "chunks": ["a", "b", "c"], "again": 16}


async def test_a_step_called_with_other_arguments_on_resume_is_named() -> None:
    with pytest.raises(ReplayCheckError, match="'second'") as info:
        await check_replay(clock)
    assert "resumed after step 'first'" in str(info.value)
    assert isinstance(info.value, AssertionError)


async def test_another_path_on_resume_is_reported() -> None:
    with pytest.raises(ReplayCheckError, match="which the first run did not"):
        await check_replay(branchy)


async def test_an_unregistered_function_is_refused() -> None:
    async def not_a_workflow() -> None:
        pass

    with pytest.raises(TypeError, match="not a registered workflow"):
        await check_replay(not_a_workflow)

"""Calls that must NOT type-check: each line marked ``# E: <why>`` must get a mypy error, and no
other line may get one (tests/test_typing.py checks both). Not run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from jeevesagent.runtime import InProcRuntime, JournaledRuntime, RetryPolicy, with_policy


async def call_model(prompt: str, *, temperature: float = 0.0) -> dict[str, float]:
    return {prompt: temperature}


def count_words(text: str, minimum: int = 1) -> int:
    return max(minimum, len(text.split()))


async def tokens(prompt: str) -> AsyncIterator[str]:
    yield prompt


@with_policy(retry=RetryPolicy(attempts=3))
async def fetch(url: str) -> bytes:
    return url.encode()


async def wrong_steps(rt: JournaledRuntime, inproc: InProcRuntime) -> None:
    await rt.step("plan", call_model, 1)  # E: wrong type for fn
    await rt.step("plan", call_model)  # E: missing argument
    await rt.step("plan", call_model, "x", "y")  # E: too many arguments
    await rt.step("plan", call_model, "x", temperatur=0.5)  # E: unknown keyword
    await rt.step("count", count_words, "a", "2")  # E: wrong type, sync fn
    await inproc.step("plan", call_model, 1)  # E: wrong type, InProcRuntime
    await rt.step("pay", call_model, "x", idempotency_key=42)  # E: the key is a str
    await rt.step("plan", "call_model", "x")  # E: not callable
    await rt.step(call_model, "x")  # E: no name
    words = await rt.step("count", count_words, "a")
    words.upper()  # E: the result is an int
    await rt.step("fetch", fetch, b"u")  # E: with_policy keeps the signature


async def wrong_stream_steps(rt: JournaledRuntime, inproc: InProcRuntime) -> None:
    rt.stream_step("tokens", tokens, 1)  # E: wrong type for fn
    rt.stream_step("tokens", tokens)  # E: missing argument
    inproc.stream_step("tokens", tokens, "a", limit=2)  # E: unknown keyword
    rt.stream_step("count", count_words, "a")  # E: fn does not return an iterable
    async for token in rt.stream_step("tokens", tokens, "a"):
        token + 1  # E: chunks are str


async def wrong_policies() -> None:
    await fetch(1)  # E: the decorated function keeps its signature
    with_policy(call_model, retry=3)  # E: retry is a RetryPolicy
    await with_policy(retry=RetryPolicy(attempts=2))(call_model)(1)  # E: the decorator keeps it too

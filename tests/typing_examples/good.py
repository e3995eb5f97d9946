"""Calls that must type-check, with the types a checker must infer (``assert_type``).

Not run: tests/test_typing.py runs mypy (strict, the project's configuration) on this file and
requires no error. The bad calls are in ``errors.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import assert_type

from jeevesagent.runtime import (
    InProcRuntime,
    JournaledRuntime,
    RetryPolicy,
    SqliteRuntime,
    StepPolicy,
    with_policy,
)


async def call_model(prompt: str, *, temperature: float = 0.0) -> dict[str, float]:
    return {prompt: temperature}


def count_words(text: str, minimum: int = 1) -> int:
    return max(minimum, len(text.split()))


async def tokens(prompt: str, *, limit: int = 3) -> AsyncIterator[str]:
    for word in prompt.split()[:limit]:
        yield word


async def open_tokens(prompt: str) -> AsyncIterator[bytes]:
    async def produce() -> AsyncIterator[bytes]:
        yield prompt.encode()

    return produce()


def numbers(n: int) -> Iterator[float]:
    yield from (float(i) for i in range(n))


@with_policy(retry=RetryPolicy(attempts=3), timeout=10)
async def fetch(url: str, *, headers: dict[str, str] | None = None) -> bytes:
    return url.encode()


@with_policy(StepPolicy(timeout=1.0))
def parse(raw: bytes) -> list[str]:
    return raw.decode().split()


@with_policy
def plain(x: int) -> int:
    return x


async def steps(rt: JournaledRuntime, inproc: InProcRuntime, sqlite: SqliteRuntime) -> None:
    # An async function gives its awaited result; a sync one its result.
    assert_type(await rt.step("plan", call_model, "x"), dict[str, float])
    assert_type(await rt.step("plan", call_model, "x", temperature=0.5), dict[str, float])
    assert_type(await rt.step("count", count_words, "a b"), int)
    assert_type(await rt.step("count", count_words, text="a b", minimum=2), int)
    assert_type(await rt.step("now", lambda: "t"), str)
    # idempotency_key is the step's own keyword; every other keyword goes to fn.
    assert_type(await rt.step("pay", call_model, "x", idempotency_key="k"), dict[str, float])
    assert_type(
        await rt.step("pay", call_model, "x", idempotency_key="k", temperature=1.0),
        dict[str, float],
    )
    assert_type(await rt.step("pay", count_words, "x", idempotency_key=None), int)
    # The same on every runtime.
    assert_type(await inproc.step("plan", call_model, "x"), dict[str, float])
    assert_type(await inproc.step("count", count_words, "a", idempotency_key="k"), int)
    assert_type(await sqlite.step("plan", call_model, "x"), dict[str, float])
    # with_policy keeps the function's type, in both forms.
    assert_type(await rt.step("fetch", fetch, "u", headers={"a": "b"}), bytes)
    assert_type(await rt.step("parse", parse, b"a b"), list[str])
    assert_type(await rt.step("plain", plain, 1), int)
    assert_type(await rt.step("again", with_policy(call_model, timeout=5), "x"), dict[str, float])
    assert_type(await inproc.step("count", with_policy(count_words, retry=None), "a"), int)
    assert_type(await fetch("u"), bytes)
    assert_type(parse(b"x"), list[str])


async def stream_steps(rt: JournaledRuntime, inproc: InProcRuntime) -> None:
    async for token in rt.stream_step("tokens", tokens, "a b c", limit=2):
        assert_type(token, str)
    async with contextlib.aclosing(rt.stream_step("tokens", tokens, "a b")) as stream:
        async for token in stream:
            assert_type(token, str)
    stream = rt.stream_step("tokens", tokens, "a")
    assert_type(await stream.__anext__(), str)
    await stream.aclose()
    async for raw in rt.stream_step("opened", open_tokens, "a"):
        assert_type(raw, bytes)
    async for number in rt.stream_step("numbers", numbers, 3):
        assert_type(number, float)
    async for token in inproc.stream_step("tokens", with_policy(tokens, timeout=1), "a"):
        assert_type(token, str)

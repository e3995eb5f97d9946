"""The ``tail`` command (issue 13, part B), run as a subprocess on real SQLite files and a real
Postgres server: it follows a stream live while this process produces it, prints a completed
one from any offset, and exits 1 when the session ended without completing the stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from .test_cli import ROOT, STORES, cli, db, failed, ok, open_runtime

__all__ = ["db"]  # the fixture, imported for the tests here

pytestmark = pytest.mark.slow

WORDS = [f"word{i} " for i in range(12)]


async def reply(gate: anyio.Event | None = None) -> AsyncIterator[str]:
    for i, word in enumerate(WORDS):
        if i == 6 and gate is not None:
            await gate.wait()
        yield word


@STORES
async def test_tail_follows_a_stream_live_then_from_any_offset(db: str) -> None:
    rt = await open_runtime(db, stream_flush_interval=0.02)
    gate = anyio.Event()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEEVESAGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                async with rt.session("chat"):
                    async for _ in rt.stream_step("reply", reply, gate):
                        pass

            tg.start_soon(produce)
            command = [sys.executable, "-m", "jeevesagent.runtime", "tail", "chat", "reply"]
            async with await anyio.open_process(
                [*command, "--db", db, "--json", "--poll", "0.02"],
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            ) as process:
                assert process.stdout is not None
                lines: list[dict[str, Any]] = []
                buffer = ""
                with anyio.fail_after(60):
                    async for text in TextReceiveStream(process.stdout):
                        buffer += text
                        *done, buffer = buffer.split("\n")
                        lines += [json.loads(line) for line in done]
                        if len(lines) == 6 and not gate.is_set():
                            # Six words read while the producer is held before the seventh.
                            gate.set()
                    assert await process.wait() == 0
        assert lines == [{"offset": i, "chunk": w} for i, w in enumerate(WORDS)]
    finally:
        await rt.aclose()
    # Completed: the text, from the start or from any offset.
    assert ok(cli("tail", "chat", "reply", "--db", db)) == "".join(WORDS) + "\n"
    assert (
        ok(cli("tail", "chat", "reply", "--db", db, "--offset", "9")) == "".join(WORDS[9:]) + "\n"
    )
    failed(cli("tail", "chat", "reply", "--db", db, "--offset", "-1"), 2)


async def broken() -> AsyncIterator[str]:
    yield "partial "
    yield "answer "
    raise RuntimeError("the model went away")


@STORES
async def test_tail_exits_1_when_the_session_ended_without_completing_the_stream(db: str) -> None:
    rt = await open_runtime(db, stream_flush_chunks=1)
    try:
        async with rt.session("gave-up"):
            with pytest.raises(RuntimeError):
                async for _ in rt.stream_step("reply", broken):
                    pass
    finally:
        await rt.aclose()
    result = cli("tail", "gave-up", "reply", "--db", db)
    failed(result, 1, "ended completed without completing stream step 'reply'", "next offset: 2")
    assert result.stdout == "partial answer "

"""A stream step that continues its reply after an interruption, with current_stream_prefix().

The first run's consumer stops after four words (as if its process had died), with those words
journaled in batches (``stream_flush_chunks=2``). The second run of the session delivers them
again first, and the producer, told what was delivered, continues the reply instead of starting
it over. Run it with ``python docs/examples/stream_prefix.py``.
"""

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from jeevesagent.runtime import SqliteRuntime, current_stream_prefix

REPLY = ["the", "order", "ships", "on", "Monday", "and", "arrives", "on", "Wednesday"]


class FakeModel:
    """Streams the words of REPLY that follow ``assistant_prefix``."""

    async def stream(self, prompt: str, assistant_prefix: str) -> AsyncIterator[str]:
        for word in REPLY[len(assistant_prefix.split()) :]:
            yield word + " "


model = FakeModel()


# docs: producer
async def call_model(prompt: str) -> AsyncIterator[str]:
    so_far = "".join(current_stream_prefix())  # [] on a first run
    async for token in model.stream(prompt, assistant_prefix=so_far):
        yield token


# docs: end producer


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite3"
        async with SqliteRuntime(path, stream_flush_chunks=2) as rt, rt.session("chat-7"):
            got = []
            async for token in rt.stream_step("reply", call_model, "when?"):
                got.append(token)
                if len(got) == 4:
                    break  # the consumer goes away part way
            print("first run :", "".join(got))
        async with SqliteRuntime(path) as rt, rt.session("chat-7"):
            reply = [token async for token in rt.stream_step("reply", call_model, "when?")]
            print("second run:", "".join(reply))
            assert "".join(reply).split() == REPLY, reply


anyio.run(main)

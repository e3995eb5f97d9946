"""Stream a session's reply to a browser with server-sent events, and resume after a reconnect.

A worker runs an agent session whose reply is a stream step (here a fake model yielding words).
An HTTP endpoint, ``GET /sessions/<id>/streams/<name>``, serves that stream as
``text/event-stream`` with ``rt.read_stream``: each chunk is an event whose ``id`` is its offset
in the stream, and the stream ends with an ``end`` event (or an ``error`` event if the session
ended without completing it). A browser's ``EventSource`` that loses its connection reconnects
with a ``Last-Event-ID`` header; the endpoint then reads from that offset + 1, so the client
gets exactly the rest -- whether the reply is still being generated or finished long ago, and
whichever server process it reconnects to (the stream is read from the journal).

Run it with ``python docs/examples/sse_stream.py``: no dependency beyond jeevesagent. The server
here is a few lines of raw HTTP on anyio so the example stays self-contained; in an application,
the same ``events()`` generator goes into your framework's streaming response (Starlette's
``StreamingResponse(events(...), media_type="text/event-stream")``, for instance). The client
plays the browser: it reads five events, drops the connection, and reconnects.
"""

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from jeevesagent.runtime import SqliteRuntime, StreamFailedError

REPLY = "Durable agents stream their replies and pick up where they left off ."
WORDS = REPLY.split()


async def fake_model(prompt: str) -> AsyncIterator[str]:
    """Stands in for a streaming LLM call: one word every 20 ms."""
    for word in WORDS:
        await anyio.sleep(0.02)
        yield word + " "


# -- the endpoint --------------------------------------------------------------------------------
async def events(
    rt: SqliteRuntime, session_id: str, name: str, last_id: str | None
) -> AsyncIterator[str]:
    """The server-sent events of a session's stream, after event ``last_id`` (None: from 0)."""
    offset = int(last_id) + 1 if last_id is not None else 0
    try:
        async for chunk in rt.read_stream(session_id, name, offset=offset):
            yield f"id: {offset}\ndata: {json.dumps(chunk)}\n\n"
            offset += 1
    except StreamFailedError as exc:
        yield f"event: error\ndata: {json.dumps(str(exc))}\n\n"
        return
    yield "event: end\ndata: \n\n"


async def serve_one(rt: SqliteRuntime, client: SocketStream) -> None:
    """One HTTP/1.1 request: ``GET /sessions/<id>/streams/<name>``, answered as an event stream."""
    async with client:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await client.receive()
        head = request.split(b"\r\n\r\n")[0].decode().split("\r\n")
        _, path, _ = head[0].split(" ")
        headers = dict(line.split(": ", 1) for line in head[1:])
        _, _, session_id, _, name = path.split("/")
        await client.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        try:
            async for event in events(rt, session_id, name, headers.get("Last-Event-ID")):
                await client.send(event.encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away; it reconnects with Last-Event-ID


# -- the browser's side --------------------------------------------------------------------------
async def read_events(
    port: int, path: str, last_id: str | None, stop_after: int | None
) -> tuple[list[tuple[str, str]], str | None]:
    """GET ``path``; the (id, data) events read, and how the stream ended ("end", "error", or
    None: we dropped the connection after ``stop_after`` events)."""
    got: list[tuple[str, str]] = []
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
        buffer = ""
        try:
            while True:
                buffer += (await stream.receive()).decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    fields = dict(
                        line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                        for line in block.split("\n")
                        if not line.startswith("HTTP/") and line and ":" in line
                    )
                    if fields.get("event") in ("end", "error"):
                        return got, fields["event"]
                    if "id" in fields:
                        got.append((fields["id"], json.loads(fields["data"])))
                        if stop_after is not None and len(got) == stop_after:
                            return got, None  # drop the connection, as a flaky network would
        except anyio.EndOfStream:
            return got, None


async def main() -> None:
    journal = Path(tempfile.mkdtemp()) / "agents.sqlite3"
    # The worker that runs the agent, and the web server: two runtimes on one journal (in
    # production, two processes or hosts). The worker journals its stream every 50 ms.
    async with (
        SqliteRuntime(journal, stream_flush_interval=0.05) as worker,
        SqliteRuntime(journal, poll_interval=0.02) as web,
        anyio.create_task_group() as tg,
    ):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def run_agent() -> None:
            async with worker.session("chat-42"):
                async for _ in worker.stream_step("reply", fake_model, "say something"):
                    pass

        async def serve() -> None:
            async with listener:
                await listener.serve(lambda client: serve_one(web, client))

        tg.start_soon(run_agent)
        tg.start_soon(serve)
        path = "/sessions/chat-42/streams/reply"
        first, ended = await read_events(port, path, None, stop_after=5)
        assert ended is None
        assert [i for i, _ in first] == ["0", "1", "2", "3", "4"]
        print("got", "".join(data for _, data in first), "... connection dropped")
        rest, ended = await read_events(port, path, first[-1][0], stop_after=None)
        assert ended == "end", ended
        print("reconnected with Last-Event-ID:", first[-1][0], "-> got the rest:")
        print("".join(data for _, data in rest))
        reply = "".join(data for _, data in first + rest)
        assert reply == "".join(w + " " for w in WORDS), reply
        assert [int(i) for i, _ in first + rest] == list(range(len(WORDS)))
        print("the client saw the whole reply once, in order:", reply)
        tg.cancel_scope.cancel()  # stop the server


if __name__ == "__main__":
    anyio.run(main)

"""The child process of tests/test_pydantic_ai_processes.py: one durable pydantic-ai agent run in
session ``s`` of a SQLite journal, with offline models (FunctionModel).

``python pydantic_ai_child.py SCENARIO JOURNAL LOG CRASH``

- ``request`` / ``stream``: the model calls tool ``lookup`` and then answers; the second model
  request (``stream``: a streamed one, through ``run_stream``) kills this process with SIGKILL
  when CRASH is ``1``.
- ``approval``: tool ``refund`` needs approval; ``RequestInput``'s ``ask`` prints the resume token
  (``token <token>``) and returns ``None``, so the run waits for the answer.

Every model request, tool call and ``ask`` appends a line to LOG (flushed and fsynced before it
goes on); the final output is printed as ``output <text>``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import anyio
from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from jeevesagent.runtime import SqliteRuntime
from jeevesagent.runtime.pydantic_ai import Durability

SCENARIO, JOURNAL, LOG, CRASH = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"


def log(line: str) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def crash_if_asked() -> None:
    if CRASH:
        os.kill(os.getpid(), signal.SIGKILL)


def answer_of(messages: list[ModelMessage]) -> str:
    return str(messages[-1].parts[-1].content)


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    n = sum(isinstance(m, ModelResponse) for m in messages) + 1
    log(f"model {n}")
    if n == 1:
        tool = "refund" if SCENARIO == "approval" else "lookup"
        args = {"amount": 5} if SCENARIO == "approval" else {"order": "42"}
        return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id="call-1")])
    crash_if_asked()
    return ModelResponse(parts=[TextPart("done: " + answer_of(messages))])


async def stream_model(messages: list[ModelMessage], info: AgentInfo) -> Any:
    n = sum(isinstance(m, ModelResponse) for m in messages) + 1
    log(f"model {n}")
    if n == 1:
        yield {0: DeltaToolCall(name="lookup", json_args='{"order": "42"}', tool_call_id="call-1")}
        return
    yield "done: "
    crash_if_asked()  # part way through the stream
    yield answer_of(messages)


def lookup(order: str) -> str:
    log(f"tool lookup {order}")
    return f"order {order} shipped"


def refund(amount: int) -> str:
    log(f"tool refund {amount}")
    return f"refunded {amount}"


async def ask(ctx: Any, requests: DeferredToolRequests, token: str) -> None:
    log("ask " + ",".join(call.tool_name for call in requests.approvals))
    print("token", token, flush=True)


async def main() -> None:
    async with SqliteRuntime(JOURNAL) as rt, rt.session("s"):
        if SCENARIO == "stream":
            agent = Agent(
                FunctionModel(stream_function=stream_model),
                name="clerk",
                tools=[lookup],
                capabilities=[Durability(rt)],
            )
            async with agent.run_stream("where is order 42?") as result:
                output = "".join([chunk async for chunk in result.stream_text(delta=True)])
        elif SCENARIO == "request":
            agent = Agent(
                FunctionModel(model), name="clerk", tools=[lookup], capabilities=[Durability(rt)]
            )
            output = (await agent.run("where is order 42?")).output
        else:
            approver: Agent[None, str] = Agent(
                FunctionModel(model),
                name="clerk",
                capabilities=[Durability(rt), RequestInput(ask, name="approve_refund")],
            )
            approver.tool_plain(requires_approval=True)(refund)
            output = (await approver.run("refund order 42")).output
    print("output", output, flush=True)


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")

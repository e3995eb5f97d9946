"""A durable pydantic-ai agent: model requests and tool calls are journaled steps of a session,
and a refund waits durably for a person's approval (extra ``jeevesagent[pydantic-ai]``).

Run it with ``python docs/examples/pydantic_ai_agent.py``: offline (pydantic-ai's FunctionModel
stands in for an LLM), on a SQLite journal in a temporary directory. The first attempt fails in
its second model request, as a crash would; the second attempt replays the first request and the
tool call from the journal and only asks the model again. Then the agent waits for an approval
that another task sends with ``resolve_external_event`` (another process would do the same).
"""

import tempfile
from pathlib import Path

import anyio
from pydantic_ai import Agent, DeferredToolRequests, RunContext
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from jeevesagent.runtime import SqliteRuntime
from jeevesagent.runtime.pydantic_ai import Durability, resolve_external_event

calls = {"model": 0, "lookup": 0, "refund": 0, "ask": 0}
flaky = {"fail": True}


def fake_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """First a tool call, then an answer built from the tool's result."""
    calls["model"] += 1
    if len(messages) == 1:
        prompt = str(messages[0].parts[-1].content)
        tool = "refund" if "refund" in prompt else "lookup"
        return ModelResponse(parts=[ToolCallPart(tool, {"order": "42"}, tool_call_id="call-1")])
    if flaky["fail"]:
        flaky["fail"] = False
        raise ConnectionError("the process died here")  # as a crash would
    return ModelResponse(parts=[TextPart(f"Done: {messages[-1].parts[-1].content}")])


# Stands in for a ticket system or a chat: where the approver finds the questions.
to_approver, approver_inbox = anyio.create_memory_object_stream[str](10)


async def ask_a_person(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
    """Hand the token to whoever approves; the run then waits for the answer."""
    calls["ask"] += 1
    to_approver.send_nowait(token)


agent = Agent(
    FunctionModel(fake_llm),
    name="support",  # names the agent's steps: keep it stable while sessions are in flight
    output_type=[str, DeferredToolRequests],
    capabilities=[Durability(), RequestInput(ask_a_person, name="approve_refund")],
)


@agent.tool_plain
def lookup(order: str) -> str:
    calls["lookup"] += 1
    return f"order {order} shipped on Monday"


@agent.tool_plain(requires_approval=True)
def refund(order: str) -> str:
    calls["refund"] += 1
    return f"order {order} refunded"


async def main() -> None:
    path = Path(tempfile.mkdtemp()) / "journal.sqlite3"
    async with SqliteRuntime(path) as rt:
        try:
            async with rt.session("ticket-1"):
                await agent.run("where is order 42?")
        except ConnectionError:
            print("attempt 1 failed in the second model request", calls)
        async with rt.session("ticket-1"):  # the same session again: replay, then the rest
            result = await agent.run("where is order 42?")
        print(result.output, calls)
        assert calls == {"model": 3, "lookup": 1, "refund": 0, "ask": 0}

        async def approve_when_asked() -> None:
            token = await approver_inbox.receive()
            await resolve_external_event(rt, token, {"approvals": {"call-1": True}})

        async with rt.session("ticket-2"), anyio.create_task_group() as tg:
            tg.start_soon(approve_when_asked)
            result = await agent.run("please refund order 42")
        print(result.output, calls)
        async with rt.session("ticket-2"):  # a replay: no model call, no tool call, no question
            assert (await agent.run("please refund order 42")).output == result.output
        assert calls == {"model": 5, "lookup": 1, "refund": 1, "ask": 1}


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")  # pydantic-ai runs on asyncio only

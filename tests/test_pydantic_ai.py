"""The pydantic-ai integration in one process (offline models: TestModel, FunctionModel): what the
journal holds and under which keys, replay, durable waits for an answer, the refusals (outside a
session, another runtime's session, trio), ``current_session()``, and that ``import
jeevesagent.runtime`` never imports pydantic-ai.

asyncio only (the ``anyio_backend`` below): pydantic-ai does not run under trio; the trio refusal
is checked by a synchronous test that runs trio itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent, DeferredToolRequests, RunContext
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from jeevesagent.runtime import (
    InMemoryJournalStore,
    InProcRuntime,
    JournaledRuntime,
    current_session,
)
from jeevesagent.runtime.pydantic_ai import (
    Durability,
    DurabilityError,
    fail_external_event,
    parse_token,
    resolve_external_event,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(
    params=[pytest.param(("asyncio", {"debug": True}), id="asyncio-only-pydantic-ai-has-no-trio")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Clerk:
    """An agent whose model calls ``lookup`` for each order in the prompt, then answers."""

    def __init__(self, capability: Durability[None] | None = None) -> None:
        self.model_calls = 0
        self.lookups: list[str] = []
        self.agent = Agent(
            FunctionModel(self.model),
            name="clerk",
            capabilities=[capability or Durability()],
        )
        self.agent.tool_plain(self.lookup)

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.model_calls += 1
        if len(messages) == 1:
            orders = str(messages[0].parts[-1].content).split()
            return ModelResponse(
                parts=[ToolCallPart("lookup", {"order": o}, tool_call_id=f"c-{o}") for o in orders]
            )
        results = sorted(str(p.content) for p in messages[-1].parts)
        return ModelResponse(parts=[TextPart("; ".join(results))])

    def lookup(self, order: str) -> str:
        self.lookups.append(order)
        return f"{order} shipped"


async def test_model_requests_and_tool_calls_are_steps_keyed_by_run_and_tool_call_id() -> None:
    store = InMemoryJournalStore()
    clerk = Clerk()
    async with JournaledRuntime(store) as rt:
        async with rt.session("s"):
            first = (await clerk.agent.run("7 9")).output
        assert first == "7 shipped; 9 shipped"
        keys = sorted(key for sid, key in store.step_keys() if sid == "s")
        run = "pydantic-ai:s/clerk/0"
        assert keys == [
            f"k:{run}:clerk__function_toolset__<agent>.call_tool:lookup:c-7",
            f"k:{run}:clerk__function_toolset__<agent>.call_tool:lookup:c-9",
            f"k:{run}:clerk__model.request:0",
            f"k:{run}:clerk__model.request:1",
        ]
        async with rt.session("s"):  # the session again: everything replays
            assert (await clerk.agent.run("7 9")).output == first
    assert (clerk.model_calls, sorted(clerk.lookups)) == (2, ["7", "9"])


async def test_two_runs_in_a_session_and_an_explicit_run_id() -> None:
    store = InMemoryJournalStore()
    clerk = Clerk()
    async with JournaledRuntime(store) as rt:
        for _ in range(2):
            async with rt.session("s"):
                assert (await clerk.agent.run("1")).output == "1 shipped"
                assert (await clerk.agent.run("2")).output == "2 shipped"
                assert (await clerk.agent.run("3", run_id="mine")).output == "3 shipped"
    assert (clerk.model_calls, clerk.lookups) == (6, ["1", "2", "3"])
    runs = {key.split(":")[2] for _, key in store.step_keys()}
    assert runs == {"s/clerk/0", "s/clerk/1", "mine"}


async def test_a_failed_tool_call_records_nothing_and_runs_again() -> None:
    tries = []
    agent = Agent(TestModel(), name="flaky", capabilities=[Durability()])

    @agent.tool_plain
    def charge(amount: int) -> str:
        tries.append(amount)
        if len(tries) == 1:
            raise ConnectionError("card network down")
        return "charged"

    async with JournaledRuntime() as rt:
        with pytest.raises(ConnectionError, match="card network down"):
            async with rt.session("s"):
                await agent.run("charge")
        async with rt.session("s"):
            await agent.run("charge")
        async with rt.session("s"):
            await agent.run("charge")
    assert len(tries) == 2


async def test_outside_a_session_the_run_is_refused() -> None:
    clerk = Clerk()
    with pytest.raises(DurabilityError, match=r"agent 'clerk' .* outside a session"):
        await clerk.agent.run("1")
    assert clerk.model_calls == 0


async def test_a_session_of_another_runtime_is_refused() -> None:
    async with JournaledRuntime() as mine, JournaledRuntime() as other:
        clerk = Clerk(Durability(mine))
        async with other.session("s"):
            with pytest.raises(DurabilityError, match=r"runs in session 's' of .* journals in"):
                await clerk.agent.run("1")
        async with mine.session("s"):
            assert (await clerk.agent.run("1")).output == "1 shipped"
    assert clerk.model_calls == 2


async def test_in_an_inproc_session_every_step_runs() -> None:
    clerk = Clerk()
    async with InProcRuntime() as rt:
        for _ in range(2):
            async with rt.session("s"):
                await clerk.agent.run("1")
    assert clerk.lookups == ["1", "1"]


def test_under_trio_the_run_is_refused() -> None:
    clerk = Clerk()

    async def main() -> None:
        async with JournaledRuntime() as rt, rt.session("s"):
            await clerk.agent.run("1")

    with pytest.raises(DurabilityError, match="asyncio only"):
        anyio.run(main, backend="trio")
    assert clerk.model_calls == 0


class Asked:
    """The tokens ``ask`` was given, and an event set at each."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.event = anyio.Event()

    async def first(self) -> str:
        await self.event.wait()
        return self.tokens[0]


def approver(asked: Asked, timeout: timedelta | None = None) -> tuple[Agent[None, Any], list[int]]:
    refunds: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("refund", {"amount": 5}, tool_call_id="r")])
        return ModelResponse(parts=[TextPart(str(messages[-1].parts[-1].content))])

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
        asked.tokens.append(token)
        asked.event.set()

    agent = Agent(
        FunctionModel(model),
        name="approver",
        output_type=[str, DeferredToolRequests],
        capabilities=[Durability(), RequestInput(ask, name="approve", timeout=timeout)],
    )

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        refunds.append(amount)
        return f"refunded {amount}"

    return agent, refunds


async def test_an_answer_resolves_the_wait_once_and_replays() -> None:
    asked = Asked()
    agent, refunds = approver(asked)
    async with JournaledRuntime() as rt:

        async def answer() -> None:
            token = await asked.first()
            assert parse_token(token)[0] == "s"
            await resolve_external_event(rt, token, {"approvals": {"r": True}})

        async with rt.session("s"), anyio.create_task_group() as tg:
            tg.start_soon(answer)
            assert (await agent.run("refund")).output == "refunded 5"
        async with rt.session("s"):
            assert (await agent.run("refund")).output == "refunded 5"
    assert (len(asked.tokens), refunds) == (1, [5])


async def test_a_failed_or_timed_out_wait_denies_the_call() -> None:
    asked = Asked()
    agent, refunds = approver(asked)
    async with JournaledRuntime() as rt:

        async def refuse() -> None:
            await fail_external_event(rt, await asked.first(), "manager said no")

        async with rt.session("s"), anyio.create_task_group() as tg:
            tg.start_soon(refuse)
            output = (await agent.run("refund")).output
        assert "manager said no" in output

        slow, slow_refunds = approver(asked, timeout=timedelta(milliseconds=50))
        async with rt.session("t"):
            assert "No decision" in (await slow.run("refund")).output
    assert refunds == slow_refunds == []


def test_a_token_that_is_not_ours_is_refused() -> None:
    for token in ("abc", "jrt1.!!!", "jrt1.e30="):
        with pytest.raises(ValueError, match="is not a resume token"):
            parse_token(token)


async def test_a_tool_can_wait_for_a_signal_itself() -> None:
    """The other way to wait: a tool calls wait_for_signal on the current session (its name made
    unique by the tool call id); the answer is journaled with the tool call's result."""
    agent = Agent(TestModel(call_tools=["ask_manager"]), name="asker", capabilities=[Durability()])
    asked = Asked()

    @agent.tool
    async def ask_manager(ctx: RunContext[None], question: str) -> str:
        session = current_session()
        asked.tokens.append(f"answer:{ctx.tool_call_id}")
        asked.event.set()
        answer = await session.runtime.wait_for_signal(session.id, asked.tokens[-1], timeout=30)
        return str(answer)

    async with JournaledRuntime() as rt:

        async def manager() -> None:
            await rt.signal("s", await asked.first(), "yes")

        async with rt.session("s"), anyio.create_task_group() as tg:
            tg.start_soon(manager)
            output = (await agent.run("may I?")).output
        assert "yes" in output
        async with rt.session("s"):
            assert (await agent.run("may I?")).output == output
    assert len(asked.tokens) == 1


async def test_current_session_is_the_innermost_session_of_any_runtime() -> None:
    with pytest.raises(RuntimeError, match="outside a session"):
        current_session()
    async with JournaledRuntime() as rt, InProcRuntime() as inproc, rt.session("a") as a:
        assert current_session() is a
        assert a.runtime is rt
        async with inproc.session("b") as b:
            assert current_session() is b
            assert b.runtime is inproc
        async with anyio.create_task_group() as tg:

            async def child() -> None:
                assert current_session() is a

            tg.start_soon(child)
        assert current_session() is a
    with pytest.raises(RuntimeError, match="outside a session"):
        current_session()


def test_importing_the_runtime_does_not_import_pydantic_ai() -> None:
    code = (
        "import sys, jeevesagent.runtime\n"
        "assert not [m for m in sys.modules if m.startswith(('pydantic_ai', 'pydantic_graph'))]\n"
        "print('OK')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "OK"), proc.stderr


def test_without_pydantic_ai_the_module_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['pydantic_ai'] = None\n"  # an import of it raises ImportError
        "try:\n"
        "    import jeevesagent.runtime.pydantic_ai\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'jeevesagent[pydantic-ai]'" in proc.stdout

"""The pydantic-ai durability capability (``Durability``): every model request (streamed ones
too), tool call and other durable unit of an agent run becomes a journaled step of the current
session, through pydantic-ai's public durable-execution extension point
(``pydantic_ai.durable_exec``: a ``BaseDurabilityCapability`` with a ``CallableOperationBackend``).

Journal keys (``idempotency_key`` of the step; the step's name is pydantic-ai's unit name):

- a tool call or its argument validation: ``pydantic-ai:{run_id}:{unit}:{tool_call_id}``;
- anything else (model requests, tool discovery, event handlers, capability operations):
  ``pydantic-ai:{run_id}:{unit}:{n}``, ``n`` counting that unit in the run (replay-stable: the
  agent loop is deterministic given the recorded results).

``run_id`` is the run's own (``agent.run(..., run_id=...)``) or, by default,
``{session_id}/{agent}/{n}`` with ``n`` counting the agent's runs in the session. pydantic-ai's
cache identity (which holds the run context, its dependencies and live objects) is never used
as a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from pydantic_ai import RunContext
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.capabilities import WrapRunHandler
from pydantic_ai.durable_exec import (
    IDENTITY_CODEC,
    BaseDurabilityCapability,
    CallableOperationBackend,
    DurabilityEngineSpec,
    DurableOperationBackend,
    DurableOperationId,
    JournalOperationNamer,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
    external_event_scope,
    record_durable_unit,
    replay_scope,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT

from .._core.registry import current_session
from .pydantic_ai_events import SignalWaiter

__all__ = ["Durability", "DurabilityError"]

KEY_PREFIX = "pydantic-ai"

# Counters of one session opening: default run ids per agent, units per run. Keyed by the session
# object, which is made anew each time the session is opened, so a resumed session counts again
# from zero, as its first run did.
_COUNTERS: WeakKeyDictionary[Any, dict[str, int]] = WeakKeyDictionary()


def _next(session: Any, counter: str) -> int:
    counts = _COUNTERS.setdefault(session, {})
    n = counts.get(counter, 0)
    counts[counter] = n + 1
    return n


class DurabilityError(UserError):
    """A durable agent was used where it cannot journal: outside a session, in a session of
    another runtime, or under trio. Nothing ran. (A pydantic-ai ``UserError``.)"""


class _Backend(CallableOperationBackend[None]):
    """Runs each durable unit as ``runtime.step(name, body, idempotency_key=...)``."""

    def __init__(self, capability: Durability[Any]) -> None:
        super().__init__(
            namer=JournalOperationNamer(
                capability.name, default_model_id=capability.default_model_id or "default"
            ),
            config=RoleBasedOperationConfig[None](
                model=None, event=None, capability=None, tool=None
            ),
        )
        self._capability = capability

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: None,
    ) -> object:
        session = self._capability.session()
        # The run context is one of the (engine-opaque) cache inputs of every operation that has
        # one; only its run id and tool call id are read, never hashed.
        ctx = next((v for v in cache_key if isinstance(v, RunContext)), None)
        run_id = ctx.run_id if ctx is not None and ctx.run_id else "-"
        is_call = isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId)
        if is_call and ctx is not None and ctx.tool_call_id:
            key = f"{KEY_PREFIX}:{run_id}:{name}:{ctx.tool_call_id}"
        else:
            prefix = f"{KEY_PREFIX}:{run_id}:{name}"
            key = f"{prefix}:{_next(session, prefix)}"
        ran = False

        async def unit() -> object:
            nonlocal ran
            ran = True
            return await body()

        result = await session.runtime.step(name, unit, idempotency_key=key)
        record_durable_unit(executed=ran)
        return result


@dataclass(init=False, kw_only=True)
class Durability(BaseDurabilityCapability[AgentDepsT]):
    """Makes a pydantic-ai agent durable in jeevesagent sessions:
    ``Agent(model, name="support", capabilities=[Durability()])``.

    Run the agent inside ``async with runtime.session(session_id):`` (or a ``@workflow`` body):
    each model request, streamed or not, and each tool call is a journaled step of that session,
    so when the session runs again after a crash, what completed replays from the journal and
    only the rest runs. Outside a session the run is refused (``DurabilityError``).

    Args:
        runtime: the runtime whose sessions journal the agent's runs; ``None`` (the default):
            whichever runtime opened the session the run is in (``current_session().runtime``).
        models: other models a run may select, by id (see pydantic-ai's durable execution docs:
            a ``Model`` instance must be registered to be used inside a durable run).
        event_stream_handler: receives the run's events; model events arrive live inside the
            model-request step (they are not replayed when the step replays).
        name: the name of the agent's steps (defaults to the agent's ``name``). Journal keys
            contain it: keep it stable while sessions are in flight.

    asyncio only: pydantic-ai does not run under trio.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="jeevesagent",
        durable_unit_noun="step",
        durable_container_noun="session",
        codec=IDENTITY_CODEC,  # the runtime's codec (pickle by default) encodes the values
        # Toolsets passed at run time were not wrapped when the agent was built: their calls
        # would run unjournaled, so they are refused inside a session.
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",  # steps run in the session's own process
            "dynamic": "enter-never",
        },
        journal_discovery=True,
        sequential_tools_in_durable_context=False,  # tool calls are keyed by tool_call_id
    )

    def __init__(
        self,
        runtime: Any = None,
        *,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        self.runtime = runtime

    # -- the session -------------------------------------------------------------------------
    def _session_or_none(self) -> Any:
        try:
            session = current_session()
        except RuntimeError:
            return None
        if self.runtime is not None and session.runtime is not self.runtime:
            return None
        return session

    def session(self) -> Any:
        """The session this agent's run journals in; raises ``DurabilityError`` if none."""
        session = self._session_or_none()
        if session is not None:
            return session
        agent = self.name or "this agent"
        try:
            other = current_session()
        except RuntimeError:
            raise DurabilityError(
                f"agent {agent!r} has the jeevesagent Durability capability but runs outside a "
                "session, so nothing would be journaled; run it inside `async with "
                "runtime.session(session_id):` or a @workflow body"
            ) from None
        raise DurabilityError(
            f"agent {agent!r} runs in session {other.id!r} of {other.runtime!r}, but its "
            f"Durability capability journals in {self.runtime!r}; open the session with that "
            "runtime, or use Durability() without a runtime (the current session's)"
        )

    def _check_asyncio(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise DurabilityError(
                f"agent {self.name!r}: pydantic-ai runs on asyncio only, not on this event loop "
                "(trio); run the session under asyncio (a journal recorded under trio resumes "
                "under asyncio)"
            ) from None

    @property
    def in_durable_context(self) -> bool:
        return self._session_or_none() is not None

    # -- engine hooks --------------------------------------------------------------------------
    def get_durable_operation_backend(self) -> DurableOperationBackend[None]:
        return _Backend(self)

    def get_default_run_id(self) -> str | None:
        session = self._session_or_none()
        if session is None:
            return None
        self._check_asyncio()  # the first hook of a run: pydantic-ai would fail obscurely later
        return f"{session.id}/{self.name}/{_next(session, 'run:' + self.name)}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        session = self._session_or_none()
        if session is None:
            return None
        # Recorded once, so a resumed run counts its `timeout=` from when it first started.
        key = f"{KEY_PREFIX}:{run_id}:start_time"
        start: datetime = await session.runtime.step(
            f"{self.name}__run_start_time", _now, idempotency_key=key
        )
        return start

    async def wrap_run(
        self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        self._check_asyncio()
        session = self.session()
        run_id = ctx.run_id or "-"

        def next_key(unit: str) -> str:
            prefix = f"{KEY_PREFIX}:{run_id}:{self.name}__{unit}"
            return f"{prefix}:{_next(session, prefix)}"

        waiter = SignalWaiter(session.runtime, session.id, self.name, next_key)
        with external_event_scope(waiter), replay_scope():
            return await super().wrap_run(ctx, handler=handler)


def _now() -> datetime:
    return datetime.now(UTC)

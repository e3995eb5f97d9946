"""``jeevesagent.runtime.pydantic_ai``: durable pydantic-ai agents (extra ``[pydantic-ai]``).

``Agent(model, name="support", capabilities=[Durability()])`` run inside ``async with
runtime.session(session_id):`` journals each model request (streamed too) and tool call as a step
of that session; ``RequestInput`` and ``wait_for_external_event`` waits become durable (answered
from any process with ``resolve_external_event`` / ``fail_external_event``). asyncio only.
"""

try:
    import pydantic_ai as _pydantic_ai  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jeevesagent.runtime.pydantic_ai needs pydantic-ai: install the extra, "
        "`pip install 'jeevesagent[pydantic-ai]'`"
    ) from _exc

from ._integrations.pydantic_ai import Durability as Durability
from ._integrations.pydantic_ai import DurabilityError as DurabilityError
from ._integrations.pydantic_ai_events import fail_external_event as fail_external_event
from ._integrations.pydantic_ai_events import parse_token as parse_token
from ._integrations.pydantic_ai_events import resolve_external_event as resolve_external_event

__all__ = (
    "Durability",
    "DurabilityError",
    "fail_external_event",
    "parse_token",
    "resolve_external_event",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name

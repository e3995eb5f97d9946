"""Durable waits for an external event in a pydantic-ai run: the ``ExternalEventWaiter`` the
``Durability`` capability installs, its resume tokens, and ``resolve_external_event`` /
``fail_external_event``, which answer a wait from any process through the session's mailbox.

A wait is a journaled ``ask`` step (it hands the token to whoever will answer) and then
``wait_for_signal`` on a signal name derived from the run and the wait; the token names the
session and that signal. A signal sent while the agent's process is down stays in the store's
mailbox and is received, once, when the session runs again; a replay returns the journaled answer
without calling ``ask`` or waiting again.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import JsonValue
from pydantic_ai.external_events import ExternalEventError, ExternalEventWaiter
from pydantic_core import to_jsonable_python

__all__ = [
    "SignalWaiter",
    "fail_external_event",
    "parse_token",
    "resolve_external_event",
]

_TOKEN_PREFIX = "jrt1."


def make_token(session_id: str, signal: str) -> str:
    """A resume token naming the session and the signal its run waits for (URL-safe text)."""
    raw = json.dumps([session_id, signal], ensure_ascii=False, separators=(",", ":"))
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")


def parse_token(token: str) -> tuple[str, str]:
    """``(session_id, signal_name)`` of a resume token handed out by a durable pydantic-ai run."""
    problem = "it does not start with " + repr(_TOKEN_PREFIX)
    if isinstance(token, str) and token.startswith(_TOKEN_PREFIX):
        try:
            raw = base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :].encode("ascii"))
            value = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeError, binascii.Error) as exc:
            problem = f"it does not decode ({exc})"
        else:
            if (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(part, str) and part for part in value)
            ):
                return value[0], value[1]
            problem = "it does not name a session and a signal"
    raise ValueError(
        f"{token!r} is not a resume token of a jeevesagent pydantic-ai run: {problem}. Pass the "
        "token the run handed to `ask` (RequestInput) unchanged."
    )


async def resolve_external_event(runtime: Any, token: str, payload: object) -> None:
    """Answer the wait that handed out ``token`` with ``payload`` (its JSON form), from any
    process sharing the runtime's store: the session receives it once, now if it is waiting,
    or when it runs again. For ``RequestInput``, ``payload`` is a ``DeferredToolResults`` (or
    its JSON form)."""
    session_id, signal = parse_token(token)
    await runtime.signal(session_id, signal, {"payload": to_jsonable_python(payload)})


async def fail_external_event(runtime: Any, token: str, reason: str) -> None:
    """End the wait that handed out ``token`` without an answer: it raises pydantic-ai's
    ``ExternalEventError(reason)`` (``RequestInput`` then denies the pending calls with it)."""
    session_id, signal = parse_token(token)
    await runtime.signal(session_id, signal, {"error": str(reason)})


class SignalWaiter(ExternalEventWaiter):
    """Waits for an external event of one agent run in a jeevesagent session.

    ``next_key(name)`` gives the wait's journal key (run and the wait's ordinal, replay-stable);
    the ``ask`` step is journaled under it, and the signal name is derived from it.
    """

    def __init__(
        self, runtime: Any, session_id: str, agent_name: str, next_key: Callable[[str], str]
    ) -> None:
        self._runtime = runtime
        self._session_id = session_id
        self._agent_name = agent_name
        self._next_key = next_key

    async def wait(
        self,
        name: str,
        *,
        ask: Callable[[str], Awaitable[JsonValue]],
        timeout: timedelta | None,
    ) -> JsonValue:
        key = self._next_key(f"external_event.{name}")
        token = make_token(self._session_id, key)
        step = f"{self._agent_name}__external_event.{name}.ask"
        answer = await self._runtime.step(step, ask, token, idempotency_key=key)
        if answer is not None:
            return answer  # type: ignore[no-any-return]
        seconds = None if timeout is None else timeout.total_seconds()
        try:
            message = await self._runtime.wait_for_signal(self._session_id, key, timeout=seconds)
        except TimeoutError:
            raise ExternalEventError(
                f"session {self._session_id!r}: no answer to {name!r} (signal {key!r}) arrived "
                f"within {timeout}"
            ) from None
        if isinstance(message, dict) and "error" in message:
            raise ExternalEventError(str(message["error"]))
        if isinstance(message, dict) and "payload" in message:
            return message["payload"]  # type: ignore[no-any-return]
        raise ExternalEventError(
            f"session {self._session_id!r}: signal {key!r} carried {message!r}, not an answer; "
            "answer a wait with jeevesagent.runtime.pydantic_ai.resolve_external_event(runtime, "
            "token, payload)"
        )

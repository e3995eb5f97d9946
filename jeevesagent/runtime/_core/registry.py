"""Registered workflows: the ``@workflow`` decorator, the registry of this process's workflows by
name, ``current_runtime()`` (the runtime running the calling workflow, a context variable) and
``current_session()`` (the session the calling task runs in, a context variable).

A workflow is an ordinary async function; registering it gives it a name that is recorded with
each session it runs, so any process -- one that imports the code, to run it, or one that does
not, to start, cancel or inspect it -- can refer to it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, overload

__all__ = [
    "current_runtime",
    "current_session",
    "registered_workflow",
    "running_runtime",
    "running_session",
    "workflow",
    "workflow_name",
]

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

_ATTR = "__jeevesagent_workflow__"
_REGISTRY: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {}

#: The runtime running the workflow body of the calling task (set by ``run`` and ``serve``).
running_runtime: ContextVar[Any] = ContextVar("jeevesagent_runtime", default=None)
#: The session object of the innermost ``session()`` context of the calling task, any runtime
#: (set and reset by that context).
running_session: ContextVar[Any] = ContextVar("jeevesagent_session", default=None)


@overload
def workflow(fn: F, /) -> F: ...


@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...


def workflow(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register an async function as a workflow: ``@workflow`` or ``@workflow(name="trip")``.

    The name defaults to ``"module:qualname"``; pin it with ``name=`` so that renaming or moving
    the function does not orphan the sessions already recorded under the old one. The function
    is returned unchanged (it can still be called directly). Registering another function under
    a name already taken raises ``ValueError``.
    """

    def register(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@workflow decorates an async function, not {f!r}")
        wf_name = name if name is not None else f"{f.__module__}:{f.__qualname__}"
        if not isinstance(wf_name, str) or not wf_name:
            raise ValueError(f"a workflow name must be a non-empty str, not {wf_name!r}")
        taken = _REGISTRY.get(wf_name)
        if taken is not None and _origin(taken) != _origin(f):
            raise ValueError(
                f"workflow name {wf_name!r} is taken by {_origin(taken)}; give "
                f"{_origin(f)} another name with @workflow(name=...)"
            )
        _REGISTRY[wf_name] = f
        setattr(f, _ATTR, wf_name)
        return f

    if fn is not None:
        return register(fn)
    return register


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def workflow_name(wf: Callable[..., Any] | str) -> str:
    """The registered name of ``wf`` (a registered function, or a name as is)."""
    if isinstance(wf, str):
        if not wf:
            raise ValueError("a workflow name must be a non-empty str")
        return wf
    name = getattr(wf, _ATTR, None)
    if name is None:
        raise TypeError(
            f"{_origin(wf)} is not a registered workflow: decorate it with @workflow "
            "(from jeevesagent.runtime import workflow)"
        )
    return str(name)


def registered_workflow(wf: Callable[..., Any] | str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The function of a registered workflow (given as the function or its name)."""
    name = workflow_name(wf)
    fn = _REGISTRY.get(name)
    if fn is None:
        raise LookupError(
            f"no workflow named {name!r} is registered in this process: import the module "
            "that defines it (its @workflow runs on import) before running or serving it"
        )
    return fn


def current_runtime() -> Any:
    """The runtime running the calling workflow (inside a workflow body started by ``run`` or
    ``serve``, and in every task started from it); raises ``RuntimeError`` elsewhere."""
    rt = running_runtime.get()
    if rt is None:
        raise RuntimeError(
            "current_runtime() is called outside a workflow: it works inside a @workflow body "
            "run by runtime.run(...) or runtime.serve(...)"
        )
    return rt


def current_session() -> Any:
    """The session the calling task runs in.

    That is what the innermost ``async with runtime.session(session_id)`` around it yielded
    (``.id``, ``.runtime``), in that task and in every task started inside it, whichever runtime
    opened it. Raises ``RuntimeError`` outside every session. Integrations use it to find the
    session (and runtime) to journal in."""
    session = running_session.get()
    if session is None:
        raise RuntimeError(
            "current_session() is called outside a session: call it inside "
            "`async with runtime.session(session_id):` or a @workflow body run by "
            "runtime.run(...) or runtime.serve(...)"
        )
    return session

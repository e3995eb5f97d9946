"""The dashboard as an ASGI app (Starlette): its pages, its JSON API, its server-sent events and
its actions, over one open :class:`JournalBackend`.

Pages (plain HTML, CSS and JavaScript shipped in ``static/``, nothing fetched from elsewhere):
``/`` the sessions list, ``/session?id=SID`` a session. The JSON API under ``/api/`` reads
(``sessions``, ``session``, ``workflows``; each with ``/events`` where it changes) and acts
(``POST signal``, ``cancel``, ``fork``, ``start``). Every action is one of the command line's
functions (:mod:`~.._cli.commands`, :mod:`~.._cli.workflows`), so it checks and refuses what
the CLI does; each is guarded by :mod:`~.guard`. Logs name the action and the session, never a
payload or a value.
"""

from __future__ import annotations

import argparse
import html
import importlib.resources
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._cli.commands import parse_payload, send_signal
from .._cli.shared import signing_key
from .._cli.target import CliError
from .._cli.workflows import cancel_session, fork_session, start_session
from .._core.names import check_name, check_session_id
from .._core.values import SIGNING_KEY_ENV
from .._errors import RuntimeJournalError
from .._journal.backend import SESSION_STATUSES, JournalBackend
from .._journaled.streamread import StreamWatch
from .guard import CSRF_HEADER, Guard, Refused
from .live import changes, stream_events
from .views import session_page, sessions_page

__all__ = ["make_app"]

log = logging.getLogger("jeevesagent.runtime.ui")

_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class _BadRequest(Exception):
    pass


def _static(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


class _GuardMiddleware:
    """Every request through :meth:`Guard.check_request` first."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            client = request.client.host if request.client else None
            try:
                self.guard.check_request(client, request.headers.get("host", ""), scope["path"])
            except Refused as exc:
                response = JSONResponse({"error": exc.message}, exc.status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Dashboard:
    """The routes' state: the store, the rules, the signing key, the stream watch."""

    def __init__(
        self,
        store: JournalBackend,
        guard: Guard,
        key_env: str,
        workflows: Sequence[str],
        poll: float,
    ) -> None:
        self.store = store
        self.guard = guard
        self.workflows = list(workflows)
        self.poll = poll
        self.watch = StreamWatch(store)
        self.args = argparse.Namespace(signing_key_env=key_env)
        try:
            self.args.signing_key = signing_key(self.args)
        except CliError as exc:
            raise ValueError(exc.message) from None

    # -- pages -----------------------------------------------------------------------------------

    def page(self, request: Request, name: str) -> Response:
        root = html.escape(request.scope.get("root_path", ""), quote=True)
        text = _static(name).decode()
        text = text.replace("{{root}}", root).replace("{{csrf}}", self.guard.csrf)
        text = text.replace("{{auth}}", "token" if self.guard.token is not None else "none")
        return Response(text, media_type="text/html", headers=_SECURITY_HEADERS)

    async def index(self, request: Request) -> Response:
        return self.page(request, "index.html")

    async def session(self, request: Request) -> Response:
        return self.page(request, "session.html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in _STATIC_TYPES or "/" in name or name.startswith("."):
            return JSONResponse({"error": f"no such file: {name}"}, 404)
        try:
            body = _static(name)
        except FileNotFoundError:
            return JSONResponse({"error": f"no such file: {name}"}, 404)
        return Response(body, media_type=_STATIC_TYPES[suffix], headers=_SECURITY_HEADERS)

    # -- reads -----------------------------------------------------------------------------------

    def _filters(self, request: Request) -> tuple[str | None, list[str] | None]:
        status = request.query_params.get("status") or None
        if status is not None and status not in SESSION_STATUSES:
            raise _BadRequest(f"unknown status {status!r}: one of {', '.join(SESSION_STATUSES)}")
        workflows = [w for w in request.query_params.getlist("workflow") if w] or None
        return status, workflows

    def _session_id(self, request: Request) -> str:
        sid = request.query_params.get("id", "")
        try:
            check_session_id(sid)
        except RuntimeJournalError as exc:
            raise _BadRequest(str(exc)) from None
        return sid

    async def api_sessions(self, request: Request) -> Response:
        status, workflows = self._filters(request)
        return _json(await sessions_page(self.store, status, workflows))

    async def api_sessions_events(self, request: Request) -> Response:
        status, workflows = self._filters(request)
        return _sse(changes(lambda: sessions_page(self.store, status, workflows), self.poll))

    async def api_session(self, request: Request) -> Response:
        return _json(await session_page(self.store, self._session_id(request)))

    async def api_session_events(self, request: Request) -> Response:
        sid = self._session_id(request)
        await session_page(self.store, sid)  # an unknown session: 404 now, not an event
        return _sse(changes(lambda: session_page(self.store, sid), self.poll / 2))

    async def api_stream(self, request: Request) -> Response:
        sid = self._session_id(request)
        name = request.query_params.get("name", "")
        try:
            check_name("stream step name", name, sid)
        except RuntimeJournalError as exc:
            raise _BadRequest(str(exc)) from None
        given = request.headers.get("last-event-id") or request.query_params.get("offset") or "0"
        if not given.isdigit():
            raise _BadRequest(f"an offset is a chunk number >= 0, not {given!r}")
        events = stream_events(self.store, self.watch, sid, name, int(given), self.poll / 10)
        return _sse(events)

    async def api_workflows(self, request: Request) -> Response:
        known = {s.workflow for s in await self.store.list_sessions() if s.workflow}
        return _json({"workflows": sorted(known | set(self.workflows))})

    # -- actions ---------------------------------------------------------------------------------

    async def _action_body(self, request: Request) -> dict[str, Any]:
        own = _own_origins(request)
        self.guard.check_action(
            path=request.url.path,
            content_type=request.headers.get("content-type", ""),
            csrf=request.headers.get(CSRF_HEADER),
            authorization=request.headers.get("authorization"),
            origin=request.headers.get("origin"),
            fetch_site=request.headers.get("sec-fetch-site"),
            own_origins=own,
        )
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest("the request body is a JSON object")
        return body

    async def act_signal(self, request: Request) -> Response:
        body = await self._action_body(request)
        sid, name = _field(body, "session"), _field(body, "name")
        check_name("signal name", name, sid)
        payload = parse_payload(_field(body, "payload"))
        sent = await send_signal(self.store, self.args, sid, name, payload)
        log.info("signal %r sent to session %r", name, sid)
        return _json({"sent": True, "session_id": sid, "name": name, **vars(sent)})

    async def act_cancel(self, request: Request) -> Response:
        sid = _field(await self._action_body(request), "session")
        before, after = await cancel_session(self.store, sid)
        log.info("cancel of session %r (it was %s; now %s)", sid, before.status, after.status)
        return _json({"session_id": sid, "was": before.status, "status": after.status})

    async def act_fork(self, request: Request) -> Response:
        body = await self._action_body(request)
        sid, new = _field(body, "session"), _field(body, "new_session")
        at = body.get("at") or None
        if at is not None and not isinstance(at, str):
            raise _BadRequest("'at' is a step name (a string), or empty for the whole journal")
        info = await fork_session(self.store, self.args, sid, new, at)
        log.info("session %r forked into %r (at %r)", sid, new, at)
        status = info.status if info is not None else "pending"
        return _json({"session_id": new, "source": sid, "at": at, "status": status})

    async def act_start(self, request: Request) -> Response:
        body = await self._action_body(request)
        name, sid = _field(body, "workflow"), _field(body, "session")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _BadRequest("'args' is a JSON array and 'kwargs' a JSON object")
        status = await start_session(self.store, self.args, name, sid, args, kwargs)
        log.info("session %r of workflow %r started (%s)", sid, name, status)
        return _json({"session_id": sid, "workflow": name, "status": status})


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"the request needs {name!r}, a non-empty string")
    return value


def _own_origins(request: Request) -> tuple[str, ...]:
    host = request.headers.get("host", "")
    return (f"http://{host}", f"https://{host}")


def _json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status, headers={"cache-control": "no-store"})


class _EventStream(StreamingResponse):
    """A server-sent event stream whose generator is closed when the response ends. Starlette
    stops iterating when the client goes away (it cancels the iteration, which may find the
    generator suspended at a ``yield``) but does not close it: left to the garbage collector,
    its ``finally`` blocks (the stream reader's) would run at no defined time, and trio warns."""

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


def _sse(events: AsyncGenerator[str, None]) -> Response:
    return _EventStream(events)


Handler = Callable[[Request], Awaitable[Response]]


def _errors(handler: Handler) -> Handler:
    """A handler whose refusals and errors become JSON ``{"error": ...}`` answers."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as exc:
            return _json({"error": exc.message}, exc.status)
        except _BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        except CliError as exc:  # unknown session: 404; a usage error: 400; refused: 409
            unknown = exc.message.startswith("unknown session")
            return _json({"error": exc.message}, 404 if unknown else 400 if exc.code == 2 else 409)
        except RuntimeJournalError as exc:  # a mismatch, an invalid name, the store refusing
            return _json({"error": str(exc)}, 409)

    return run


def make_app(
    store: JournalBackend,
    *,
    token: str | None,
    no_auth: bool = False,
    signing_key_env: str = SIGNING_KEY_ENV,
    workflows: Sequence[str] = (),
    poll_interval: float = 1.0,
) -> ASGIApp:
    """The dashboard over ``store`` (see :func:`jeevesagent.runtime.ui.create_app`)."""
    guard = Guard.make(token, no_auth)
    d = Dashboard(store, guard, signing_key_env, workflows, poll_interval)
    get: list[tuple[str, Handler]] = [
        ("/", d.index),
        ("/session", d.session),
        ("/static/{name}", d.static),
        ("/api/sessions", d.api_sessions),
        ("/api/sessions/events", d.api_sessions_events),
        ("/api/session", d.api_session),
        ("/api/session/events", d.api_session_events),
        ("/api/stream", d.api_stream),
        ("/api/workflows", d.api_workflows),
    ]
    post: list[tuple[str, Handler]] = [
        ("/api/signal", d.act_signal),
        ("/api/cancel", d.act_cancel),
        ("/api/fork", d.act_fork),
        ("/api/start", d.act_start),
    ]
    routes = [Route(p, _errors(h), methods=["GET"]) for p, h in get]
    routes += [Route(p, _errors(h), methods=["POST"]) for p, h in post]
    app = Starlette(routes=routes)
    app.state.dashboard = d
    return _GuardMiddleware(app, guard)

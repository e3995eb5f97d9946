"""The web dashboard's ASGI app (``jeevesagent.runtime.ui``), on SQLite and Postgres, asyncio
and trio: served by a real hypercorn on a free port in the test's own event loop and read with
httpx (the pages' JSON, the server-sent events, the actions); and each security rule (token,
CSRF, loopback-only without a token, a planted pickle never run, no payload logged), on the app
through httpx's ASGI transport. The ``ui`` command is run as a subprocess.
"""

from __future__ import annotations

import json
import logging
import pathlib
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h11
import httpx
import pytest

from jeevesagent.runtime import InMemoryJournalStore, JournaledRuntime, workflow
from jeevesagent.runtime._cli.target import open_store, parse_target
from jeevesagent.runtime._journal.backend import STEP, Record
from jeevesagent.runtime._ui.command import serve
from jeevesagent.runtime.ui import create_app

from .test_cli import ROOT, Planted, cli, failed, open_runtime

TOKEN = "t0ken-for-the-dashboard-tests"
DBS = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


@workflow(name="tests.ui.trip")
async def trip(city: str) -> str:
    from jeevesagent.runtime import current_runtime

    rt = current_runtime()
    plan = await rt.step("plan", lambda: f"plan for {city}")
    await rt.step("book", lambda: "booked")
    return str(plan)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def db(store_target: str) -> str:
    """The journal: a SQLite path, or a DSN of a fresh Postgres schema (conftest)."""
    return store_target


@pytest.fixture
async def rt(db: str) -> AsyncIterator[JournaledRuntime]:
    """A runtime on the journal (its tables made), with the JSON codec."""
    runtime = await open_runtime(db, codec="json", signing_key="")
    await runtime.store.list_sessions(limit=1)  # a SQLite file is made when first used
    try:
        yield runtime
    finally:
        await runtime.aclose()


@asynccontextmanager
async def dashboard(db: str, loop: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard over the journal at ``db`` (opened as the ``ui`` command opens it), served
    by hypercorn on a free port; a client with its base URL."""
    store = await open_store(parse_target(db), "")
    app = create_app(store, **{"token": TOKEN, "poll_interval": 0.1, **options})
    port = free_port()
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, app, f"127.0.0.1:{port}", loop, stop.wait)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                with anyio.fail_after(20):
                    while True:
                        try:
                            await client.get("/static/style.css")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.05)
                try:
                    yield client
                finally:
                    stop.set()
    finally:
        await store.aclose()


def loop_of(anyio_backend: Any) -> str:
    return str(anyio_backend[0])


async def action(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    """A POST as the pages send it: JSON, the CSRF token read from a page, the bearer token."""
    page = (await client.get("/")).text
    csrf = page.split('name="jrt-csrf" content="')[1].split('"')[0]
    sent = {"x-jeevesagent-csrf": csrf, "authorization": f"Bearer {TOKEN}", **headers}
    return await client.post(path, json=body, headers={k: v for k, v in sent.items() if v})


async def events(
    client: httpx.AsyncClient, path: str, until: Any, **headers: str
) -> list[tuple[str, Any]]:
    """Server-sent events of ``path`` as ``(event, data)``, read until ``until(events)``.

    Read over a plain socket with h11 (an httpx stream left before its end leaves async
    generators unfinished, which trio reports)."""
    url = httpx.URL(str(client.base_url)).join(path)
    got: list[tuple[str, Any]] = []
    conn = h11.Connection(h11.CLIENT)
    target = url.raw_path.decode()
    head = [("host", f"{url.host}:{url.port}"), *headers.items()]
    text, name = "", "message"
    with anyio.fail_after(30):
        async with await anyio.connect_tcp(str(url.host), int(url.port or 80)) as sock:
            await sock.send(conn.send(h11.Request(method="GET", target=target, headers=head)))
            await sock.send(conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await sock.receive())
                    continue
                if isinstance(event, h11.Response):
                    assert event.status_code == 200, event
                    assert dict(event.headers)[b"content-type"].startswith(b"text/event-stream")
                elif isinstance(event, h11.Data):
                    text += bytes(event.data).decode()
                    while "\n" in text:
                        line, text = text.split("\n", 1)
                        if line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: "):
                            got.append((name, json.loads(line[6:])))
                            name = "message"
                            if until(got):
                                return got
                else:
                    raise AssertionError(f"the event stream ended early: {got}")


# -- the app on SQLite and Postgres, asyncio and trio ----------------------------------------------


@DBS
async def test_list_and_session_pages_and_a_live_approval(
    rt: JournaledRuntime, db: str, anyio_backend: Any
) -> None:
    got: list[Any] = []

    async def waits_for_approval() -> None:
        async with rt.session("needs-ok"):
            await rt.step("draft", lambda: {"text": "a draft"})
            got.append(await rt.wait_for_signal("needs-ok", "approve"))

    await rt.run(trip, "trip-1", "Oslo")
    async with dashboard(db, loop_of(anyio_backend)) as client, anyio.create_task_group() as tg:
        tg.start_soon(waits_for_approval)
        listed = await events(
            client,
            "/api/sessions/events",
            lambda ev: any(s["session_id"] == "needs-ok" for s in ev[-1][1]["sessions"]),
        )
        page = listed[-1][1]
        assert page["counts"]["completed"] == 1
        assert page["counts"]["running"] == 1
        assert page["workflows"] == ["tests.ui.trip"]
        by_id = {s["session_id"]: s for s in page["sessions"]}
        assert by_id["trip-1"]["workflow"] == "tests.ui.trip"
        assert by_id["needs-ok"]["status"] == "running"

        filtered = (await client.get("/api/sessions", params={"status": "completed"})).json()
        assert [s["session_id"] for s in filtered["sessions"]] == ["trip-1"]
        bad = await client.get("/api/sessions", params={"status": "nope"})
        assert bad.status_code == 400
        assert "unknown status 'nope'" in bad.json()["error"]

        trip_page = (await client.get("/api/session", params={"id": "trip-1"})).json()
        names = [(r["kind"], r["name"]) for r in trip_page["rows"]]
        assert names[0][0] == "workflow"  # its arguments, recorded first
        assert ("step", "plan") in names
        assert ("step", "book") in names
        assert names.index(("step", "plan")) < names.index(("step", "book"))  # journal order
        plan = next(r for r in trip_page["rows"] if r["name"] == "plan")
        assert plan["preview"] == '"plan for Oslo"'
        assert plan["shown"]
        assert all(r["duration"] >= 0 for r in trip_page["rows"])
        assert trip_page["counts"]["step"] == 2
        assert trip_page["outcome"]["value"] == '"plan for Oslo"'

        r = await action(
            client,
            "/api/signal",
            {"session": "needs-ok", "name": "approve", "payload": '{"ok": 1}'},
        )
        assert r.status_code == 200, r.text
        assert r.json()["sent"] is True
        seen = await events(
            client,
            "/api/session/events?id=needs-ok",
            lambda ev: ev[-1][1]["session"]["status"] == "completed",
        )
        rows = seen[-1][1]["rows"]
        assert any(r["kind"] == "signal" and r["preview"] == '{"ok": 1}' for r in rows)
    assert got == [{"ok": 1}]
    missing = None
    async with dashboard(db, loop_of(anyio_backend)) as client:
        missing = await client.get("/api/session", params={"id": "no-such"})
    assert missing.status_code == 404
    assert "unknown session 'no-such'" in missing.json()["error"]


@DBS
async def test_cancel_fork_and_start_from_the_api(
    rt: JournaledRuntime, db: str, anyio_backend: Any
) -> None:
    await rt.run(trip, "trip-2", "Rome")
    async with dashboard(db, loop_of(anyio_backend)) as client:
        r = await action(
            client, "/api/fork", {"session": "trip-2", "new_session": "f", "at": "book"}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "session_id": "f",
            "source": "trip-2",
            "at": "book",
            "status": "pending",
        }
        fork_rows = (await client.get("/api/session", params={"id": "f"})).json()["rows"]
        assert [r["name"] for r in fork_rows if r["kind"] == "step"] == ["plan"]

        r = await action(client, "/api/fork", {"session": "trip-2", "new_session": "g", "at": "x"})
        assert r.status_code == 409
        assert "'x'" in r.json()["error"]

        r = await action(client, "/api/cancel", {"session": "f"})
        assert r.json() == {"session_id": "f", "was": "pending", "status": "cancelled"}
        r = await action(client, "/api/cancel", {"session": "nobody"})
        assert r.status_code == 404

        body = {"workflow": "tests.ui.trip", "session": "t3", "args": ["Paris"], "kwargs": {}}
        r = await action(client, "/api/start", body)
        assert r.json() == {"session_id": "t3", "workflow": "tests.ui.trip", "status": "pending"}
        listed = (await client.get("/api/sessions", params={"status": "pending"})).json()
        assert [(s["session_id"], s["waiting_text"]) for s in listed["sessions"]] == [
            ("t3", "a worker")
        ]
        r = await action(client, "/api/start", {**body, "args": ["Lima"]})
        assert r.status_code == 409  # other arguments for an existing session
        r = await action(client, "/api/start", {**body, "args": "Lima"})
        assert r.status_code == 400
    assert await rt.handle("t3").status() == "pending"
    assert await rt.handle("f").status() == "cancelled"


@DBS
async def test_a_live_stream_and_a_reconnect_with_last_event_id(
    rt: JournaledRuntime, db: str, anyio_backend: Any
) -> None:
    go_on = anyio.Event()

    async def produce() -> AsyncIterator[str]:
        yield "first "
        await go_on.wait()
        yield "second"

    async def session() -> None:
        async with rt.session("talk"):
            async for _ in rt.stream_step("reply", produce):
                pass

    async with dashboard(db, loop_of(anyio_backend)) as client, anyio.create_task_group() as tg:
        tg.start_soon(session)
        path = "/api/stream?id=talk&name=reply"
        first = await events(client, path, lambda ev: len(ev) == 1)
        assert first == [("chunk", {"offset": 0, "text": "first "})]  # while it is produced
        go_on.set()
        rest = await events(client, path, lambda ev: ev[-1][0] == "end", **{"last-event-id": "1"})
        assert rest == [("chunk", {"offset": 1, "text": "second"}), ("end", {"offset": 2})]
        page = (await client.get("/api/session", params={"id": "talk"})).json()
        assert page["streams"] == [{"name": "reply", "completed": True}]


# -- security rules, on the app itself ----------------------------------------------------------


@asynccontextmanager
async def asgi_client(
    tmp_path: pathlib.Path, client: tuple[str, int] = ("127.0.0.1", 5000), **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, JournaledRuntime]]:
    db = str(tmp_path / "journal.sqlite3")
    rt = await open_runtime(db, codec="json", signing_key="")
    await rt.run(trip, "trip", "Bergen")
    store = await open_store(parse_target(db), "")
    app = create_app(store, **{"token": TOKEN, **options})
    transport = httpx.ASGITransport(app=app, client=client)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c, rt
    finally:
        await store.aclose()
        await rt.aclose()


async def test_an_action_needs_the_token(tmp_path: pathlib.Path) -> None:
    async with asgi_client(tmp_path) as (client, rt):
        for auth in ("", "Bearer wrong-token-of-some-length", f"Basic {TOKEN}"):
            r = await action(client, "/api/cancel", {"session": "trip"}, authorization=auth)
            assert r.status_code == 401, (auth, r.text)
            assert "token" in r.json()["error"]
        assert (await client.get("/api/sessions")).status_code == 200  # reading needs none
        r = await action(client, "/api/cancel", {"session": "trip"})
        assert r.status_code == 200
        assert await rt.handle("trip").status() == "completed"  # ended: cancel changes nothing


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"x-jeevesagent-csrf": ""}, 403, "CSRF token"),
        ({"x-jeevesagent-csrf": "forged"}, 403, "CSRF token"),
        ({"origin": "http://evil.example"}, 403, "another origin"),
        ({"sec-fetch-site": "cross-site"}, 403, "cross-site"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "JSON request"),
        ({"content-type": "text/plain"}, 415, "JSON request"),
    ],
    ids=["no-csrf", "wrong-csrf", "origin", "fetch-site", "form", "text-plain"],
)
async def test_csrf_is_refused(
    tmp_path: pathlib.Path, headers: dict[str, str], status: int, says: str
) -> None:
    async with asgi_client(tmp_path) as (client, rt):
        await rt.start(trip, "later", "Turku")
        r = await action(client, "/api/cancel", {"session": "later"}, **headers)
        assert r.status_code == status, r.text
        assert says in r.json()["error"]
        assert await rt.handle("later").status() == "pending"
        same = {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"}
        r = await action(client, "/api/cancel", {"session": "later"}, **same)
        assert r.status_code == 200, r.text
        assert await rt.handle("later").status() == "cancelled"


async def test_no_token_needs_no_auth_stated_and_then_serves_loopback_only(
    tmp_path: pathlib.Path,
) -> None:
    store = InMemoryJournalStore()
    with pytest.raises(ValueError, match="needs a token"):
        create_app(store)
    with pytest.raises(ValueError, match="too short"):
        create_app(store, token="short")
    async with asgi_client(tmp_path, ("10.1.2.3", 5000), token=None, no_auth=True) as (c, _):
        r = await c.get("/api/sessions")
        assert r.status_code == 403
        assert "loopback clients only" in r.json()["error"]
    async with asgi_client(tmp_path, token=None, no_auth=True) as (client, rt):
        r = await client.get("/api/sessions", headers={"host": "rebound.example:8765"})
        assert r.status_code == 403
        assert "loopback Host" in r.json()["error"]
        await rt.start(trip, "later", "Turku")
        r = await action(client, "/api/cancel", {"session": "later"}, authorization="")
        assert r.status_code == 200, r.text
        r = await action(client, "/api/cancel", {"session": "trip"}, **{"x-jeevesagent-csrf": ""})
        assert r.status_code == 403  # CSRF still applies without a token


async def test_a_planted_pickle_is_never_run(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "planted"
    db = str(tmp_path / "journal.sqlite3")
    rt = await open_runtime(db, signing_key="")
    async with rt.session("evil"):
        await rt.step("ok", lambda: 1)
    data = pickle.dumps(Planted(marker))
    await rt.store.append([Record("evil", STEP, "s:boom:" + "0" * 24, data, time.time())])
    await rt.aclose()
    store = await open_store(parse_target(db), "")
    app = create_app(store, token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            page = (await client.get("/api/session", params={"id": "evil"})).json()
            await client.get("/api/sessions")
    finally:
        await store.aclose()
    boom = next(r for r in page["rows"] if r["name"] == "boom")
    assert not boom["shown"]
    assert "not unpickled (unsigned)" in boom["preview"]
    assert "touch" in boom["preview"]  # described by its opcodes
    assert not marker.exists()


async def test_no_payload_or_value_is_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-payload-value"
    caplog.set_level(logging.DEBUG)
    async with asgi_client(tmp_path) as (client, rt):
        async with rt.session("hitl"):
            await rt.step("s", lambda: secret + "-step")
        r = await action(
            client, "/api/signal", {"session": "hitl", "name": "approve", "payload": f'"{secret}"'}
        )
        assert r.status_code == 200
        r = await action(
            client, "/api/signal", {"session": "hitl", "name": "approve", "payload": secret}
        )
        assert r.status_code == 400  # not JSON: refused, and the error does not echo it
        assert secret not in r.text
        await client.get("/api/session", params={"id": "hitl"})
    assert "signal 'approve' sent to session 'hitl'" in caplog.text
    assert secret not in caplog.text


async def test_pages_and_static_files_ship_in_the_package(tmp_path: pathlib.Path) -> None:
    async with asgi_client(tmp_path) as (client, _):
        page = await client.get("/session", params={"id": "trip"})
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        for name in ("common.js", "session.js", "list.js", "style.css"):
            assert (await client.get(f"/static/{name}")).status_code == 200
            assert f"/static/{name}" in page.text or name in ("list.js",)
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        assert (await client.get("/static/..%2Fapp.py")).status_code == 404
        assert (await client.get("/static/app.py")).status_code == 404


# -- the ui command --------------------------------------------------------------------------------


def test_the_ui_command_refuses_to_serve_without_a_token(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "j.sqlite3")
    failed(cli("ui", "--db", db), 2, "needs a token", "--no-auth")
    failed(cli("ui", "--db", db, "--no-auth", "--host", "0.0.0.0"), 2, "loopback")
    failed(cli("ui", "--db", db, "--token", "short"), 2, "too short")
    failed(cli("ui", "--db", db, "--token", TOKEN), 1, "no journal at")


def test_the_ui_command_serves_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "j.sqlite3")
    assert cli("init-schema", "--db", db).returncode == 0
    port = free_port()
    env = {"JEEVESAGENT_UI_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jeevesagent.runtime", "ui", "--db", db, "--port", str(port)],
        env={**_clean_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"on http://127.0.0.1:{port}/ (actions need the token)" in line, line
        body = _get_when_up(f"http://127.0.0.1:{port}/api/sessions")
        assert json.loads(body)["sessions"] == []
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping (SIGTERM)" in err


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("JEEVESAGENT_")}


def _get_when_up(url: str) -> str:
    import time
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_package_and_its_command_line_never_import_the_dashboards_dependencies() -> None:
    code = (
        "import sys, jeevesagent.runtime, jeevesagent.runtime.__main__\n"
        "from jeevesagent.runtime.__main__ import main\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'hypercorn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**_clean_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"

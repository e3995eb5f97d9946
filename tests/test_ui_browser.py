"""The dashboard end to end in a real headless Chromium (Debian's ``chromium``, driven by
Playwright; no browser is downloaded): the ``ui`` command and a worker serving the workflows run
as subprocesses on one SQLite journal, and the browser does what an operator does.

Run by ``nox -s tests-ui-browser`` (which sets ``JEEVESAGENT_UI_BROWSER=1``); skipped in other
runs. Under ``CI=true`` a missing Chromium or Playwright fails instead of skipping. With
``JEEVESAGENT_UI_SCREENSHOTS=DIR`` the list and a session page are saved there as PNGs (the
README's pictures: ``docs/``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from .test_cli import ROOT, cli, ok
from .test_ui import TOKEN, _get_when_up, free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("JEEVESAGENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
UI = [sys.executable, "-m", "jeevesagent.runtime", "ui"]

if not os.environ.get("JEEVESAGENT_UI_BROWSER"):
    pytest.skip("browser tests run in `nox -s tests-ui-browser`", allow_module_level=True)

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent(
    """
    import pathlib, sys
    import anyio
    from jeevesagent.runtime import SqliteRuntime, current_runtime, workflow

    @workflow(name="approval")
    async def approval() -> dict:
        rt = current_runtime()
        sid = rt.current_session_id()
        draft = await rt.step("draft", lambda: {"text": "refund 42 EUR to order 7"})
        answer = await rt.wait_for_signal(sid, "approve")
        return await rt.step("finish", lambda: {"draft": draft, "answer": answer})

    @workflow(name="talker")
    async def talker(go: str) -> str:
        rt = current_runtime()

        async def words():
            yield "first chunk; "
            while not pathlib.Path(go).exists():
                await anyio.sleep(0.05)
            yield "second chunk"

        text = ""
        async for chunk in rt.stream_step("reply", words):
            text += chunk
        return text

    async def main() -> None:
        rt = SqliteRuntime(sys.argv[1], codec="json")
        async with rt:
            await rt.serve(approval, talker, suspend_after=0.5)

    anyio.run(main)
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEEVESAGENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A journal, a worker serving its workflows, and the dashboard serving it (subprocesses)."""
    tmp = tmp_path_factory.mktemp("ui-browser")
    db = str(tmp / "journal.sqlite3")
    ok(cli("init-schema", "--db", db))
    (tmp / "worker.py").write_text(WORKER)
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, str(tmp / "worker.py"), db], env=_env(), cwd=ROOT),
        subprocess.Popen(
            [*UI, "--db", db, "--port", str(port), "--poll", "0.2"],
            env={**_env(), "JEEVESAGENT_UI_TOKEN": TOKEN},
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        _get_when_up(base + "/api/sessions")
        yield {"db": db, "base": base, "tmp": tmp, "ui": procs[1]}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright is not installed ({exc})")
    if not shutil.which(CHROMIUM):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="jeevesagent-chromium-"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 860},
        )
        try:
            yield context
        finally:
            context.close()


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI=true: the browser tests must run)")
    pytest.skip(message)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        page.close()
    assert errors == [], errors  # no script error on any page


def _start(site: dict[str, Any], workflow: str, sid: str, *args: str) -> None:
    arguments = "[" + ", ".join(f'"{a}"' for a in args) + "]"
    ok(cli("start", workflow, sid, "--args", arguments, "--db", site["db"]))


def _shot(page: Any, name: str) -> None:
    folder = os.environ.get("JEEVESAGENT_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(pathlib.Path(folder) / name), full_page=True)


def _status(page: Any, status: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text(status, timeout=WAIT_MS)


def test_approve_from_the_list_resumes_the_session_without_a_reload(
    site: dict[str, Any], page: Any
) -> None:
    _start(site, "approval", "refund-7")
    _start(site, "talker", "chat-1", str(site["tmp"] / "go-chat-1"))
    page.goto(site["base"] + "/")
    row = page.locator('tr[data-session="refund-7"]')
    row.locator("text=waiting").wait_for(timeout=WAIT_MS)  # suspended, waiting for the signal
    assert "signal 'approve'" in row.inner_text()
    page.locator('button.count[data-status="waiting"] .n').wait_for(timeout=WAIT_MS)
    _shot(page, "dashboard-sessions.png")

    row.locator("a").click()
    page.wait_for_url("**/session?id=refund-7")
    page.locator("#signal-title", has_text="waits for signal").wait_for(timeout=WAIT_MS)
    assert page.input_value("#sig-name") == "approve"
    page.fill("#token", TOKEN)
    page.fill("#sig-payload", '{"approved": true, "by": "ada"}')
    page.click("#sig-send")
    _status(page, "completed")  # the page follows the session live: no reload
    _shot(page, "dashboard-session.png")
    outcome = page.inner_text("#outcome")
    assert '"answer": {"approved": true, "by": "ada"}' in outcome
    assert page.locator('li.row[data-name="finish"]').count() == 1
    assert page.locator("li.row .bar").count() >= 4  # a bar per row


def test_a_live_stream_shows_its_chunks_as_they_are_produced(
    site: dict[str, Any], page: Any
) -> None:
    from playwright.sync_api import expect

    go = site["tmp"] / "go-chat-2"
    _start(site, "talker", "chat-2", str(go))
    page.goto(site["base"] + "/session?id=chat-2")
    chunks = page.locator('section.stream[data-stream="reply"] pre')
    chunks.wait_for(timeout=WAIT_MS)
    expect(chunks).to_contain_text("first chunk", timeout=WAIT_MS)
    assert "second" not in chunks.inner_text()  # the producer is still waiting
    go.touch()
    expect(chunks).to_have_text("first chunk; second chunk", timeout=WAIT_MS)
    page.locator("section.stream.done").wait_for(timeout=WAIT_MS)
    _status(page, "completed")


def test_an_action_without_the_token_is_refused_then_cancel_and_fork(
    site: dict[str, Any], page: Any
) -> None:
    _start(site, "approval", "refund-8")
    page.goto(site["base"] + "/session?id=refund-8")
    page.evaluate("sessionStorage.clear()")
    page.reload()
    _status(page, "waiting")
    page.click("#cancel-go")
    page.locator("#message.error", has_text="needs the dashboard's token").wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(500)
    assert page.inner_text("#status") == "waiting"  # refused: nothing changed

    page.fill("#token", TOKEN)
    page.click("#cancel-go")
    _status(page, "cancelled")

    page.select_option("#fork-at", "draft")
    page.fill("#fork-new", "refund-8-again")
    page.click("#fork-go")
    page.locator("#message.ok", has_text="forked into refund-8-again").wait_for(timeout=WAIT_MS)
    page.click("#fork-link")
    page.wait_for_url("**/session?id=refund-8-again")
    _status(page, "waiting")  # the fork ran from the top, and waits for its approval again
    page.goto(site["base"] + "/?status=waiting")
    page.locator('tr[data-session="refund-8-again"]').wait_for(timeout=WAIT_MS)
    assert page.locator('tr[data-session="refund-8"]').count() == 0  # filtered out

"""A durable pydantic-ai agent killed with SIGKILL (tests/pydantic_ai_child.py, a real child
process on a SQLite journal) resumes in a new process: only the model request it died in runs
again, a tool call that completed is not repeated, and an approval sent from another process
while the agent was down is received once. Offline models (pydantic-ai's FunctionModel).

asyncio only: pydantic-ai does not run under trio (the children run asyncio; the parent's own
runtime, which sends the approval, runs on asyncio too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import SqliteJournalStore, SqliteRuntime
from jeevesagent.runtime._core.keys import idempotency_journal_key
from jeevesagent.runtime.pydantic_ai import parse_token, resolve_external_event

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "pydantic_ai_child.py"
CHILD_TIMEOUT = 60


@pytest.fixture(
    params=[pytest.param(("asyncio", {"debug": True}), id="asyncio-only-pydantic-ai-has-no-trio")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def start(scenario: str, journal: Path, log: Path, crash: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), scenario, str(journal), str(log), "1" if crash else "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    return proc.returncode, out, err


def lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("scenario", ["request", "stream"])
def test_a_crash_in_the_second_model_request_reruns_only_that_request(
    tmp_path: Path, scenario: str
) -> None:
    journal, log = tmp_path / "journal.sqlite3", tmp_path / "effects.log"
    code, out, err = finish(start(scenario, journal, log, crash=True))
    assert code == -signal.SIGKILL, err
    assert "output" not in out
    assert lines(log) == ["model 1", "tool lookup 42", "model 2"]

    code, out, err = finish(start(scenario, journal, log, crash=False))
    assert code == 0, err
    assert out.splitlines() == ["output done: order 42 shipped"]
    # The first request and the tool call replayed; the request it died in ran again.
    assert lines(log) == ["model 1", "tool lookup 42", "model 2", "model 2"]

    code, out, err = finish(start(scenario, journal, log, crash=False))
    assert (code, out.splitlines()) == (0, ["output done: order 42 shipped"]), err
    assert len(lines(log)) == 4  # a completed session replays whole


async def test_an_approval_sent_while_the_agent_was_down_is_received_once(tmp_path: Path) -> None:
    journal, log = tmp_path / "journal.sqlite3", tmp_path / "effects.log"
    proc = start("approval", journal, log, crash=False)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("token "), (line, proc.stderr.read() if proc.stderr else "")
        token = line.split()[1]
        session_id, signal_name = parse_token(token)
        assert session_id == "s"
        # Kill it once `ask` is recorded: it is waiting for the answer (or about to).
        store = SqliteJournalStore(journal)
        try:
            with anyio.fail_after(CHILD_TIMEOUT):
                # Another process's journal: polled, as nothing here can be woken by it.
                ask_key = idempotency_journal_key(signal_name)
                while await store.get_step("s", ask_key) is None:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        finally:
            await store.aclose()
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await anyio.to_thread.run_sync(proc.communicate)  # reaps it and closes its pipes
    assert proc.returncode == -signal.SIGKILL
    assert lines(log) == ["model 1", "ask refund"]

    # The answer, from this process, while the agent is down.
    async with SqliteRuntime(journal) as rt:
        await resolve_external_event(rt, token, {"approvals": {"call-1": True}})

    code, out, err = await anyio.to_thread.run_sync(finish, start("approval", journal, log, False))
    assert code == 0, err
    assert out.splitlines() == ["output done: refunded 5"]  # `ask` was not called again
    assert lines(log) == ["model 1", "ask refund", "tool refund 5", "model 2"]

    # Received once: it is in the journal now, not in the mailbox; a replay neither waits nor asks.
    code, out, err = await anyio.to_thread.run_sync(finish, start("approval", journal, log, False))
    assert (code, out.splitlines()) == (0, ["output done: refunded 5"]), err
    assert len(lines(log)) == 4
    async with SqliteRuntime(journal) as rt:
        with pytest.raises(TimeoutError):  # outside the session: straight from the mailbox
            await rt.wait_for_signal("s", signal_name, timeout=0.5)

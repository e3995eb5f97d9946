"""DBOSRuntime (extra ``[dbos]``) on DBOS's SQLite and Postgres system databases.

DBOS is a per-process singleton, so every scenario runs in a child process of its own
(tests/dbos_child.py); a crash is a SIGKILL of that child. The tests themselves are synchronous:
the event loop that matters is the child's (asyncio; DBOS does not run under trio).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "dbos_child.py"

pytestmark = pytest.mark.slow


def child(scenario: str, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), scenario, url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(scenario: str, url: str) -> str:
    proc = child(scenario, url)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"{scenario}: exit {proc.returncode}\n{out}\n{err}"
    assert out.rstrip().endswith("OK"), f"{scenario}:\n{out}\n{err}"
    return out


def ran(out: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("RAN ")]


# DBOS 3.4 on a SQLite system database needs SQLite >= 3.42 on Python >= 3.12 (unixepoch('subsec'));
# DBOSRuntime refuses an older one with a clear error (tested below), so those runs use Postgres.
OLD_SQLITE = sys.version_info >= (3, 12) and sqlite3.sqlite_version_info < (3, 42, 0)
SQLITE = pytest.param(
    "sqlite",
    marks=pytest.mark.skipif(
        OLD_SQLITE,
        reason=f"DBOS 3.4 cannot use SQLite {sqlite3.sqlite_version} on Python >= 3.12 (needs "
        "3.42): DBOSRuntime refuses it, see test_an_old_sqlite_is_refused_with_what_works",
    ),
)


@pytest.fixture(params=[SQLITE, "postgres"])
def system_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh DBOS system database: a SQLite file, or a Postgres database DBOS creates."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dbos.sqlite3'}"
    return str(request.getfixturevalue("dbos_postgres_url"))


def test_steps_streams_signals_and_a_finished_session_replays(system_db: str) -> None:
    out = run("basics", system_db)
    # Each body ran once; the replay-only reopen ran nothing.
    assert ran(out) == ["plan", "plan-2", "keyed", "flaky"]


def test_a_body_that_raised_resumes_with_its_steps_replayed(system_db: str) -> None:
    assert ran(run("raise_then_resume", system_db)) == ["a", "b"]


def test_other_arguments_at_a_recorded_position_are_a_mismatch(system_db: str) -> None:
    assert ran(run("diverge", system_db)) == ["a"]


def test_sigkill_mid_session_then_resume_runs_only_the_rest(system_db: str) -> None:
    proc = child("crash", system_db)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == "WAITING":
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert lines == ["RAN a", "WAITING"]
    # While no process runs the session, another process signals it; then a third resumes it.
    run("send", system_db)
    out = run("resume", system_db)
    assert ran(out) == ["b"]  # "a" replayed from DBOS's record
    assert out.count("GOT ann") == 1


def test_an_old_sqlite_is_refused_with_what_works(tmp_path: Path) -> None:
    """Where DBOS cannot use this Python's SQLite, making the runtime says so (not DBOS's
    IntegrityError at launch); elsewhere the same construction works."""
    url = f"sqlite:///{tmp_path / 'dbos.sqlite3'}"
    code = (
        "from jeevesagent.runtime import DBOSRuntime\n"
        "try:\n"
        f"    DBOSRuntime({url!r})\n"
        "except RuntimeError as exc:\n"
        "    print('REFUSED', exc)\n"
        "else:\n"
        "    print('MADE')\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    if OLD_SQLITE:
        assert result.stdout.startswith("REFUSED"), result.stdout
        assert "SQLite 3.42" in result.stdout
        assert "Postgres system database" in result.stdout
    else:
        assert result.stdout.strip() == "MADE", result.stdout


def test_trio_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    # Refused before DBOS connects: no server is needed, and no SQLite of any version.
    run("trio_refused", "postgresql://nobody@127.0.0.1:9/nothing")


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_importing_the_runtime_never_imports_dbos() -> None:
    result = python(
        "import sys, jeevesagent.runtime as rt\n"
        "assert 'dbos' not in sys.modules\n"
        "cls = rt.DBOSRuntime\n"
        "assert 'dbos' not in sys.modules, 'the class alone must not import dbos'\n"
        "print(cls.__module__, cls.name)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jeevesagent.runtime.dbos", "dbos"]


def test_without_the_extra_making_one_names_the_pip_install() -> None:
    result = python(
        "import sys\n"
        "sys.modules['dbos'] = None  # as if dbos were not installed\n"
        "from jeevesagent.runtime import DBOSRuntime\n"
        "try:\n"
        "    DBOSRuntime('sqlite:///x.sqlite3')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'jeevesagent[dbos]'" in result.stdout

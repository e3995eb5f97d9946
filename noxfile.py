"""Developer tasks: ``nox -s tests`` (the CI command), ``lint``, ``typing``, ``demo``, ``bench``."""

from __future__ import annotations

import os
import tempfile

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio, over memory, SQLite and a real Postgres."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "jeevesagent", "tests", "benchmarks", "docs", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "jeevesagent", "tests", "benchmarks", "docs", "noxfile.py"
    )


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".", "mypy", "asyncpg-stubs", "trio")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks of DESIGN.md §5 (``nox -s bench -- --quick`` for a smoke run)."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job twice on a fresh journal: a crash, then a resume that replays."""
    session.install("-e", ".")
    path = os.path.join(tempfile.mkdtemp(prefix="jeevesagent-demo-"), "demo.sqlite3")
    # The first run kills itself with SIGKILL on purpose (exit status -9 / 137).
    session.run(
        "python", "-m", "jeevesagent.runtime", "demo", "--path", path, success_codes=[0, -9, 137]
    )
    session.run("python", "-m", "jeevesagent.runtime", "demo", "--path", path)

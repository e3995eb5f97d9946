"""The README's quickstart, the guides' examples (docs/examples) and the demo (the project's main
job) run as documented; every example a page of the documentation includes is one of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .test_dbos import OLD_SQLITE

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "docs" / "examples"
# Examples that keep their journal in the current folder: run twice there, the second run replays.
REPLAYED = {
    "approval.py",
    "quickstart.py",
    "recovery.py",
    "retention.py",
    "signing.py",
    "suspension.py",
    "worker_sigterm.py",
    "workflows.py",
}


def python(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    lines = first_block.group(1).splitlines()
    assert "python -m jeevesagent.runtime demo" in lines[0]
    assert "nox -s tests" in lines[1]


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_example_runs_and_replays(index: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_python_blocks()[index])
    first = python(str(script), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = python(str(script), cwd=tmp_path)  # the second run replays from the journal
    assert second.returncode == 0, second.stderr


def test_quickstart_second_run_calls_nothing(tmp_path: Path) -> None:
    code = readme_python_blocks()[0]
    # Count calls of the step functions across two runs.
    code = code.replace(
        "async def call_model(prompt: str) -> str:\n",
        "async def call_model(prompt: str) -> str:\n    print('CALLED call_model')\n",
    ).replace(
        "async def send_email(to: str, body: str) -> bool:\n",
        "async def send_email(to: str, body: str) -> bool:\n    print('CALLED send_email')\n",
    )
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    first = python(str(script), cwd=tmp_path)
    second = python(str(script), cwd=tmp_path)
    assert first.stdout.count("CALLED") == 2, first.stderr
    assert second.stdout.count("CALLED") == 0, second.stderr


def test_demo_worker_crashes_then_a_new_worker_resumes_with_replay(tmp_path: Path) -> None:
    journal = str(tmp_path / "demo.sqlite3")
    first = python("-m", "jeevesagent.runtime", "demo", "--path", journal, cwd=tmp_path)
    # A real crash: the worker's process killed itself with SIGKILL part way through.
    assert first.returncode in (-signal.SIGKILL, 137), (first.returncode, first.stderr)
    assert "RAN       book_flight" in first.stdout
    assert "send_email" not in first.stdout.split("dies here")[0]
    [first_pid] = re.findall(r"worker \(pid (\d+)\) runs session 'trip-42'", first.stdout)

    second = python("-m", "jeevesagent.runtime", "demo", "--path", journal, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "the worker that ran it is dead, and 4 recorded steps" in second.stdout
    [second_pid] = re.findall(r"worker \(pid (\d+)\) runs session 'trip-42'", second.stdout)
    assert second_pid != first_pid  # another worker, in another process, resumed it
    for step in ("plan", "reply", "search_flights", "book_flight"):
        assert re.search(rf"replayed\s+{step}\b", second.stdout), second.stdout
    assert re.search(r"RAN\s+send_email\b", second.stdout)
    assert "1 step ran, 4 replayed" in second.stdout
    assert "'confirmation': 'JX-7Q2'" in second.stdout

    third = python("-m", "jeevesagent.runtime", "demo", "--path", journal, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "0 steps ran: the session had completed" in third.stdout
    assert "runs session" not in third.stdout  # no worker ran the body again
    assert "'confirmation': 'JX-7Q2'" in third.stdout  # the result, read from the journal


def test_demo_reset_starts_over(tmp_path: Path) -> None:
    journal = str(tmp_path / "demo.sqlite3")
    done = python(
        "-m", "jeevesagent.runtime", "demo", "--path", journal, "--no-crash", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "5 steps ran, 0 replayed" in done.stdout
    again = python("-m", "jeevesagent.runtime", "demo", "--path", journal, "--reset", cwd=tmp_path)
    assert again.returncode in (-signal.SIGKILL, 137), (again.returncode, again.stderr)
    assert "The journal is empty" in again.stdout


def test_readme_quickstart_is_the_quickstart_example() -> None:
    assert readme_python_blocks() == [(EXAMPLES / "quickstart.py").read_text()], (
        "README.md's only Python block is docs/examples/quickstart.py (the site includes it)"
    )


@pytest.mark.parametrize(
    "example",
    # temporal_*.py need the [temporal] extra and a server: tests/temporal runs them
    sorted(p for p in EXAMPLES.glob("*.py") if "temporal" not in p.name),
    ids=lambda p: p.name,
)
def test_docs_example_runs(example: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = {}
    if "JEEVESAGENT_PG_DSN" in example.read_text():  # a Postgres example: a fresh schema for it
        env["JEEVESAGENT_PG_DSN"] = str(request.getfixturevalue("pg_schema_dsn"))
    if "JEEVESAGENT_DBOS_SYSTEM_DB" in example.read_text() and OLD_SQLITE:
        # DBOS cannot use this Python's SQLite (see tests/test_dbos.py): a Postgres one instead.
        env["JEEVESAGENT_DBOS_SYSTEM_DB"] = str(request.getfixturevalue("dbos_postgres_url"))
    result = python(str(example), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    if example.name in REPLAYED:
        again = python(str(example), cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr


def included_examples() -> list[tuple[str, str, dict[str, str]]]:
    """(page, included file, options) of every ``literalinclude`` in the documentation."""
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        for target, body in re.findall(r"```\{literalinclude\} (\S+)\n(.*?)```", text, re.S):
            options = dict(re.findall(r'^:([\w-]+): "?(.*?)"?$', body, re.M))
            found.append((page.relative_to(ROOT).as_posix(), target, options))
    return found


def test_the_guides_include_their_code_from_docs_examples() -> None:
    included = included_examples()
    assert len(included) >= 10
    for page, target, options in included:
        path = (ROOT / page).parent.joinpath(target).resolve()
        assert path.parent == EXAMPLES, f"{page} includes {target}: not a docs/examples file"
        assert path.is_file(), f"{page} includes {target}, which does not exist"
        text = path.read_text()
        for marker in ("start-after", "end-before"):
            if marker in options:
                assert text.count(options[marker]) == 1, f"{page}: {target} lacks {options[marker]}"
    pages = {p for p, _, _ in included}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        code = re.findall(r"```python\n", page.read_text())
        assert code == [], f"{page}: Python code pasted into a page; include a docs/examples file"
    assert "docs/guides/workflows.md" in pages

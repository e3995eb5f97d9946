"""The typing of ``step``, ``stream_step`` and ``with_policy``: mypy (strict, the project's
configuration in pyproject.toml) on ``tests/typing_examples``. ``good.py`` must have no error
(its ``assert_type`` calls check the inferred types); in ``errors.py`` each line marked
``# E: <why>`` must get an error, and no other line any error. (Lines, not error codes: which
code mypy gives a call that matches no overload has changed between versions.)"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = pathlib.Path(__file__).resolve().parent / "typing_examples"
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")
EXPECTED = re.compile(r"#\s*E:\s*\w")

Errors = dict[str, dict[int, list[str]]]  # file name -> line -> messages


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> Errors:
    """The errors of one mypy run over both example files."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")),
            *("--cache-dir", str(cache), "--no-pretty"),
            *(str(EXAMPLES / name) for name in ("good.py", "errors.py")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    errors: Errors = {"good.py": {}, "errors.py": {}}
    for line in proc.stdout.splitlines():
        m = ERROR.match(line)
        if m is None:
            continue
        path = pathlib.Path(m["path"])
        # Errors in other modules (the package itself: `mypy` alone checks it) are not ours.
        if path.parent.name == EXAMPLES.name and path.name in errors:
            errors[path.name].setdefault(int(m["line"]), []).append(m["message"])
    assert errors["errors.py"], proc.stdout + proc.stderr  # mypy did check the examples
    return errors


def test_good_examples_type_check(mypy_errors: Errors) -> None:
    assert mypy_errors["good.py"] == {}


def test_each_bad_example_is_an_error_at_its_line(mypy_errors: Errors) -> None:
    marked = {
        n
        for n, text in enumerate((EXAMPLES / "errors.py").read_text().splitlines(), 1)
        if EXPECTED.search(text)
    }
    assert len(marked) > 10, "the # E: markers were not found"
    missing = sorted(marked - mypy_errors["errors.py"].keys())
    unexpected = {n: m for n, m in mypy_errors["errors.py"].items() if n not in marked}
    assert (missing, unexpected) == ([], {})

"""``jeevesagent.runtime.TemporalRuntime`` is loaded lazily: importing the package never imports
temporalio, and without the ``[temporal]`` extra using it names the extra to install. (The
Temporal tests themselves run in their own process: tests/temporal, ``nox -s tests-temporal``.)"""

from __future__ import annotations

from .test_public_api import run_repo_python


def test_importing_the_package_does_not_import_temporalio() -> None:
    code = (
        "import sys, jeevesagent.runtime, jeevesagent.runtime.journal\n"
        "from jeevesagent.runtime import *\n"
        "assert 'temporalio' not in sys.modules, 'temporalio was imported'\n"
        "assert 'jeevesagent.runtime._temporal.runtime' not in sys.modules\n"
    )
    result = run_repo_python(code)
    assert result.returncode == 0, result.stderr


def test_without_the_extra_using_it_names_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['temporalio'] = None  # as if the extra were not installed\n"
        "import jeevesagent.runtime as rt\n"
        "try:\n"
        "    rt.TemporalRuntime\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = run_repo_python(code)
    assert result.returncode == 0, result.stderr
    assert "pip install 'jeevesagent[temporal]'" in result.stdout

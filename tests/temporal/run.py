"""Run the Temporal tests (``python tests/temporal/run.py [pytest args]``; ``nox -s
tests-temporal``) and exit with pytest's own status, skipping interpreter finalization:
temporalio can abort the interpreter at exit (temporalio/sdk-python issue 300), which would
replace an honest status with SIGABRT's."""

from __future__ import annotations

import os
import sys

import pytest

if __name__ == "__main__":
    os.environ["JEEVESAGENT_TEMPORAL_TESTS"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    code = pytest.main([here, "-p", "no:cacheprovider", *sys.argv[1:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))

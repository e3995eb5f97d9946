"""Running the conformance suite against a store backend: a test module of your project.

``MyBackend`` stands for your ``JournalBackend`` subclass; here it is a subclass of the bundled
SQLite store, so that the example runs as it is. Run it with pytest
(``python -m pytest docs/examples/store_conformance.py``), or as a script
(``python docs/examples/store_conformance.py``), which runs pytest on this file.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from jeevesagent.runtime.sqlite import SqliteJournalStore
from jeevesagent.runtime.testing import BackendOpener, JournalBackendConformance


class MyBackend(SqliteJournalStore):
    """Your backend: a ``JournalBackend`` subclass (see ``jeevesagent.runtime.journal``)."""


# docs: suite
class TestMyBackend(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> BackendOpener:
        # One fresh, empty storage per test; called again, another backend on the same storage.
        return lambda: MyBackend(tmp_path / "journal.db")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # the event loops to run the suite on


# docs: end suite

if __name__ == "__main__":
    # As a script: pytest in a child process, the suite on asyncio only (to keep it short).
    argv = [__file__, "-q", "-p", "no:cacheprovider", "-k", "asyncio", "--rootdir", "."]
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", *argv], check=False).returncode)

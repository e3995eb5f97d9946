"""docs/examples/temporal_session.py runs as documented (tests/test_docs.py runs the others)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_temporal_example_runs(temporal_target: str, tmp_path: Path) -> None:
    example = ROOT / "docs" / "examples" / "temporal_session.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JEEVESAGENT_TEMPORAL_TARGET": temporal_target}
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["booked: 3 days in Lisbon (ok by Ana)"] * 2


def test_the_example_starts_its_own_dev_server_without_a_target(tmp_path: Path) -> None:
    example = ROOT / "docs" / "examples" / "temporal_session.py"
    env = {k: v for k, v in os.environ.items() if k != "JEEVESAGENT_TEMPORAL_TARGET"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The dev server it starts shares its stdout (its banner may come at any point): our lines.
    ours = [line for line in result.stdout.splitlines() if line.startswith("booked")]
    assert ours == ["booked: 3 days in Lisbon (ok by Ana)"] * 2, result.stdout

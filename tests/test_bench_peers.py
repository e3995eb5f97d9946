"""Smoke test of ``nox -s bench-peers``'s own side: our worker answers every request over its
pipe on a real SQLite file (tiny workloads; the peers need their virtualenvs and are not run
here). Nothing is timed or compared: the worker itself checks that each step ran on record,
none on replay, and neither step nor body on the result lookup.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "peers" / "ours_worker.py"

pytestmark = pytest.mark.slow


def test_our_worker_answers_each_workload(tmp_path: pathlib.Path) -> None:
    base = {"store": "sqlite", "base": str(tmp_path), "steps": 5, "sessions": 2, "per_session": 3}
    ops = ["describe", "floors", "record", "replay", "lookup", "concurrent", "stream"]
    requests = "".join(json.dumps({**base, "op": op}) + "\n" for op in ops)
    done = subprocess.run(
        [sys.executable, str(WORKER)],
        input=requests,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=WORKER.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["ok"] for a in answers] == [True] * len(ops), done.stdout
    metrics = dict(zip(ops, (a["metrics"] for a in answers), strict=True))
    assert set(metrics["floors"]) == {"insert", "read", "stream_record", "stream_replay"}
    assert set(metrics["stream"]) == {"record", "replay"}
    for op in ("record", "replay", "lookup", "concurrent"):
        assert metrics[op][op] > 0
    assert list(tmp_path.iterdir()) == []  # every journal was removed

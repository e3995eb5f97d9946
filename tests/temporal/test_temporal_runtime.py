"""TemporalRuntime on a real Temporal dev server: the §2 surface, replay, signals between
runtimes, continue-as-new, workflows, trio refused, and a SIGKILL crash resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from jeevesagent.runtime import RuntimeJournalError, current_runtime, workflow

ROOT = Path(__file__).resolve().parents[2]


async def test_steps_replay_and_only_new_steps_run(rt: Any) -> None:
    calls: list[int] = []

    async def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    async with rt.session("s1") as s:
        assert s.id == "s1"
        assert [await rt.step(f"double_{i}", double, i) for i in range(3)] == [0, 2, 4]
        assert await rt.step("once", double, 9, idempotency_key="k") == 18
        assert await rt.step("again", double, 1, idempotency_key="k") == 18  # same key: deduped
    async with rt.session("s1"):
        assert [await rt.step(f"double_{i}", double, i) for i in range(4)] == [0, 2, 4, 6]
    assert calls == [0, 1, 2, 9, 3], "recorded steps replay; only the new one ran"


async def test_stream_step_replays_its_chunks(rt: Any) -> None:
    pulls: list[int] = []

    async def tokens(n: int) -> Any:
        for i in range(n):
            pulls.append(i)
            yield f"t{i}"

    for _ in range(2):
        async with rt.session("st"):
            assert [c async for c in rt.stream_step("reply", tokens, 3)] == ["t0", "t1", "t2"]
    assert pulls == [0, 1, 2], "the second run replayed the recorded chunks"


async def test_a_signal_from_another_runtime_is_received_once(
    rt: Any, temporal_target: str, task_queue: str
) -> None:
    from jeevesagent.runtime import TemporalRuntime

    other = await TemporalRuntime.connect(temporal_target, task_queue=task_queue)
    async with other:
        await other.signal("sig", "approve", {"by": "ana"})  # the session is not open anywhere
        async with rt.session("sig"):
            assert await rt.wait_for_signal("sig", "approve", timeout=10) == {"by": "ana"}
            assert rt.poll_signal("sig", "approve") is None

            async def later() -> None:
                await other.signal("sig", "approve", "second")

            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                assert await rt.wait_for_signal("sig", "approve", timeout=10) == "second"
            with pytest.raises(TimeoutError):
                await rt.wait_for_signal("sig", "approve", timeout=0.2)
        async with rt.session("sig"):  # replay: the same payloads, no wait
            assert await rt.wait_for_signal("sig", "approve") == {"by": "ana"}
            assert await rt.wait_for_signal("sig", "approve") == "second"


async def test_a_long_session_continues_as_new_and_keeps_its_journal(
    rt: Any, task_queue: str
) -> None:
    # The dev server suggests continue-as-new at 300 history events here (conftest): 120 steps
    # of ~5 events each cross it at least once.
    async def ident(x: int) -> int:
        return x

    async with rt.session("long"):
        for i in range(120):
            assert await rt.step(f"s{i}", ident, i) == i
    handle = rt.client.get_workflow_handle(f"{task_queue}:long")
    described = await handle.describe()
    assert described.run_id != described.raw_description.workflow_execution_info.first_run_id
    ran: list[int] = []

    async def record(x: int) -> int:
        ran.append(x)
        return x

    async with rt.session("long"):
        assert [await rt.step(f"s{i}", record, i) for i in range(121)] == list(range(121))
    assert ran == [120], "every step recorded before continue-as-new replayed"


@workflow(name="temporal-trip")
async def trip(city: str) -> str:
    rt = current_runtime()

    async def book(c: str) -> str:
        return f"booked {c}"

    return await rt.step("book", book, city)


async def test_workflow_runs_and_its_result_is_kept(rt: Any) -> None:
    assert await rt.run(trip, "w1", "Lisbon") == "booked Lisbon"
    assert await rt.result("w1", timeout=10) == "booked Lisbon"
    assert await rt.handle("w1").status() == "completed"
    info = await rt.store.session_info("w1")
    assert info is not None
    assert info.workflow == "temporal-trip"


@pytest.mark.parametrize("anyio_backend", ["trio"])  # this one checks the refusal under trio
async def test_trio_is_refused_naming_the_alternatives(temporal_target: str) -> None:
    from jeevesagent.runtime import TemporalRuntime

    with pytest.raises(RuntimeJournalError, match="SqliteRuntime or PostgresRuntime"):
        await TemporalRuntime.connect(temporal_target)


def child(target: str, task_queue: str, sid: str, log: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(__file__).with_name("crash_child.py")
    args = [sys.executable, str(script), target, task_queue, sid, str(log), mode]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def test_a_process_killed_inside_a_step_resumes_without_repeating_recorded_steps(
    rt: Any, temporal_target: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "ran.txt"
    first = child(temporal_target, task_queue, "crash", log, "crash")
    out, err = await anyio.to_thread.run_sync(first.communicate)
    assert first.returncode == -signal.SIGKILL, err
    assert log.read_text().split() == ["plan", "charge"]
    # The approval arrives while nobody runs the session; the resumed run receives it once.
    await rt.signal("crash", "approve", "yes")
    second = child(temporal_target, task_queue, "crash", log, "resume")
    out, err = await anyio.to_thread.run_sync(second.communicate)
    assert second.returncode == 0, err
    assert out.strip() == "sent: plan for Lisbon; charged 120; yes"
    # plan replayed; charge (killed before it was recorded) ran again; notify ran once.
    assert log.read_text().split() == ["plan", "charge", "charge", "notify"]
    info = await rt.store.session_info("crash")
    assert info is not None
    assert (info.status, info.owner) == ("completed", None)

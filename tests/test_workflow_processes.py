"""Workflows across real processes (issue 12, "Done when"), on SQLite (a file) and Postgres (a
schema) shared by child processes: a worker killed with SIGKILL has its sessions finished by
another live worker; three workers never run one session at once; ``cancel`` from another
process stops a running session within its bound; ``result`` from a third process returns the
value or re-raises; a session interrupted by KeyboardInterrupt (SIGINT) or by a cancelled
``serve`` (SIGTERM) is resumed by the next worker.

The workers are child processes (tests/workflow_child.py); this process starts, cancels and
reads sessions through a runtime of its own. Each test runs this process and its first worker on
the test's event loop, and a second worker (or reader) on the other one, so a session moves
between asyncio and trio processes. Side effects are counted in a log outside the processes:
each step function appends ``ran PID SESSION STEP TIME`` when it starts.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SessionCancelledError,
    SqliteJournalStore,
)
from jeevesagent.runtime._core.keys import describe_key

ROOT = Path(__file__).resolve().parent.parent
OTHER = {"asyncio": "trio", "trio": "asyncio"}
WITHIN = 60  # seconds for any one wait of a test (they take a few)


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the side-effect log ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    what: str  # "ran" or "stopped"
    pid: int
    session: str
    step: str
    at: float  # time.time() in the child


def events(log: Path) -> list[Event]:
    text = log.read_text() if log.exists() else ""
    out = []
    for line in text.splitlines():
        what, pid, session, step, at = line.split()
        out.append(Event(what, int(pid), session, step, float(at)))
    return out


def ran(log: Path) -> list[Event]:
    return [e for e in events(log) if e.what == "ran"]


def check_once_each(
    log: Path,
    expected: dict[str, list[str]],
    stopped: Collection[int] = (),
) -> collections.Counter[tuple[str, str]]:
    """Every step of ``expected`` (session -> steps) ran, each once -- except that the last step
    a stopped (killed, interrupted) worker began in a session may have run once more: its
    function was running when the worker stopped, so nothing of it was recorded. Returns the
    counts."""
    runs = ran(log)
    counts = collections.Counter((e.session, e.step) for e in runs)
    assert set(counts) == {(s, step) for s, steps in expected.items() for step in steps}
    allowed = set()
    for pid in stopped:
        last: dict[str, str] = {}
        for e in runs:
            if e.pid == pid:
                last[e.session] = e.step
        allowed |= set(last.items())
    twice = {key: n for key, n in counts.items() if n > 1}
    assert all(n == 2 and key in allowed for key, n in twice.items()), (twice, allowed)
    for key in twice:  # the second run is by another process, after the stopped one's
        pids = [e.pid for e in runs if (e.session, e.step) == key]
        assert pids[0] in stopped, (key, pids)
        assert pids[1] not in stopped, (key, pids)
    return counts


async def wait_for(what: str, predicate: Callable[[], bool], within: float = WITHIN) -> None:
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 -- a file other processes write
            await anyio.sleep(0.01)
    assert predicate(), what


# -- child processes -------------------------------------------------------------------------------


class Child:
    def __init__(self, process: Process, out: Path, err: Path) -> None:
        self.process = process
        self.out = out
        self.err = err

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    async def expect(self, prefix: str) -> str:
        with anyio.fail_after(WITHIN):
            while True:
                found = [line for line in self.lines() if line.startswith(prefix)]
                if found:
                    return found[0]
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"child {self.pid} ended ({self.process.returncode}) before printing "
                        f"{prefix!r}: {self.lines()}\n{self.stderr()}"
                    )
                await anyio.sleep(0.01)

    async def stop(self, signum: int) -> int:
        """Send ``signum`` and reap the process (a zombie would still count as a live owner).
        A child that does not end in time is made to print its threads' stacks (faulthandler,
        SIGABRT) into the failure."""
        self.process.send_signal(signum)
        with anyio.move_on_after(WITHIN):
            return await self.process.wait()
        self.process.send_signal(signal.SIGABRT)
        with anyio.move_on_after(WITHIN):
            await self.process.wait()
        raise AssertionError(
            f"child {self.pid} did not end within {WITHIN} s of signal {signum}; its stacks:\n"
            f"{self.stderr()}"
        )


@dataclass
class Setup:
    kind: str
    target: str
    loop: str  # this process's event loop, and its first worker's
    log: Path
    tmp: Path

    @asynccontextmanager
    async def child(self, name: str, mode: str, loop: str, **config: Any) -> AsyncIterator[Child]:
        """A child process (``mode``: see tests/workflow_child.py), killed at the end if it is
        still running."""
        config = {"mode": mode, "kind": self.kind, "target": self.target, "loop": loop, **config}
        config.setdefault("log", str(self.log))
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        code = "from tests.workflow_child import main; main()"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = await anyio.open_process(
                [sys.executable, "-X", "faulthandler", "-c", code, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        child = Child(process, out, err)
        try:
            yield child
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()

    def worker(self, name: str, loop: str, concurrency: int = 8) -> Any:
        return self.child(name, "serve", loop, concurrency=concurrency)


@pytest.fixture
async def setup(
    store_kind: str, store_target: str, anyio_backend: Any, tmp_path: Path
) -> AsyncIterator[tuple[Setup, JournaledRuntime]]:
    """The test's store, shared with its children, and this process's runtime on it."""
    store: SqliteJournalStore | PostgresJournalStore
    if store_kind == "sqlite":
        store = SqliteJournalStore(store_target)
    else:
        store = await PostgresJournalStore.connect(store_target, min_size=1, max_size=4)
        await store.init_schema()
    async with store, JournaledRuntime(store, poll_interval=0.02) as rt:
        yield Setup(store_kind, store_target, anyio_backend[0], tmp_path / "ran.log", tmp_path), rt


async def recorded_steps(rt: JournaledRuntime, sid: str) -> set[str]:
    journal = await rt.store.load_session(sid)  # type: ignore[attr-defined]
    return {describe_key(k) for k in journal.steps if k.startswith("s:")}


def job_steps(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def job_result(sid: str, n: int) -> str:
    return f"{sid}:{sum(range(n))}"


# -- 1. a worker killed with SIGKILL: a live peer finishes its sessions ---------------------------


@pytest.mark.slow
async def test_a_killed_workers_sessions_are_finished_by_a_live_worker_without_a_restart(
    setup: tuple[Setup, JournaledRuntime],
) -> None:
    s, rt = setup
    steps, gate = 5, s.tmp / "gate"
    hold = 2  # s2 and later wait for the gate: the kill comes while s2 runs in every session

    def at_hold(sessions: list[str]) -> bool:
        return {e.session for e in ran(s.log) if e.step == f"s{hold}"} >= set(sessions)

    async with s.worker("a", s.loop, concurrency=3) as a:
        await a.expect("serving")
        mine = [f"a-{i}" for i in range(3)]
        for sid in mine:
            await rt.start("proc.job", sid, steps, 0.0, str(gate), hold)
        await wait_for("A runs its sessions up to s2", lambda: at_hold(mine))
        async with s.worker("b", OTHER[s.loop]) as b:  # B serves on, with room to spare
            await b.expect("serving")
            theirs = [f"b-{i}" for i in range(3)]  # A is full (concurrency 3): B takes these
            for sid in theirs:
                await rt.start("proc.job", sid, steps, 0.0, str(gate), hold)
            await wait_for("B runs its sessions up to s2", lambda: at_hold(mine + theirs))
            killed_at = time.time()
            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
            await wait_for(
                "B takes A's sessions over",
                lambda: {e.session for e in ran(s.log) if e.pid == b.pid} == {*mine, *theirs},
            )
            takeover = max(e.at for e in ran(s.log) if e.pid == b.pid) - killed_at
            gate.touch()
            for sid in mine + theirs:
                assert await rt.result(sid, timeout=WITHIN) == job_result(sid, steps)
            assert b.process.returncode is None, b.stderr()  # B served on: no restart
    runs = ran(s.log)
    # Every step ran once, but s2 of A's sessions: it was running in A when the kill came (not
    # recorded), so B ran it again.
    counts = check_once_each(s.log, {sid: job_steps(steps) for sid in mine + theirs}, {a.pid})
    assert {key for key, n in counts.items() if n == 2} == {(sid, f"s{hold}") for sid in mine}
    for sid in mine:
        assert [e.pid for e in runs if e.session == sid] == [a.pid] * 3 + [b.pid] * 3
        assert await recorded_steps(rt, sid) == set(job_steps(steps))
    print(f"\n{s.kind}/{s.loop}: B took over A's sessions {takeover * 1000:.0f} ms after SIGKILL")
    assert takeover < 10  # a dead owner on this host is seen at once, not after its 15 s lease
    assert {i.session_id for i in await rt.list_sessions("completed")} == {*mine, *theirs}


# -- 2. three workers never run one session at once -----------------------------------------------


@pytest.mark.slow
async def test_three_workers_share_100_sessions_and_run_each_step_once(
    setup: tuple[Setup, JournaledRuntime],
) -> None:
    s, rt = setup
    steps, sids = 3, [f"job-{i:03}" for i in range(100)]
    loops = [s.loop, OTHER[s.loop], s.loop]
    async with (
        s.worker("w0", loops[0]) as w0,
        s.worker("w1", loops[1]) as w1,
        s.worker("w2", loops[2]) as w2,
    ):
        for w in (w0, w1, w2):
            await w.expect("serving")
        started = time.perf_counter()
        for sid in sids:  # started while the workers poll for them
            await rt.start("proc.job", sid, steps, 0.0)
        for sid in sids:
            assert await rt.result(sid, timeout=WITHIN) == job_result(sid, steps)
        took = time.perf_counter() - started
        workers = {w.pid for w in (w0, w1, w2)}
        assert all(w.process.returncode is None for w in (w0, w1, w2))
        # Every session ends "completed" in the sessions table. Checked while the workers run:
        # one that listed a session as pending just before another worker completed it may still
        # claim it (a claim sets "running"), find its result and release it "completed" again;
        # killing the workers (below) in that window would leave the row "running" until its
        # lease runs out -- a crash's state, recoverable, not what this test is about.
        with anyio.fail_after(WITHIN):
            while {i.session_id for i in await rt.list_sessions("completed")} != set(sids):  # noqa: ASYNC110 -- other processes write it
                await anyio.sleep(0.02)
    check_once_each(s.log, {sid: job_steps(steps) for sid in sids})
    by_session: dict[str, set[int]] = collections.defaultdict(set)
    for e in ran(s.log):
        by_session[e.session].add(e.pid)
    assert all(len(pids) == 1 for pids in by_session.values())  # each ran in one worker
    shares = collections.Counter(next(iter(pids)) for pids in by_session.values())
    assert set(shares) <= workers
    print(f"\n{s.kind}/{s.loop}: 100 sessions in {took:.2f} s, by worker {sorted(shares.values())}")


# -- 3. cancel from another process --------------------------------------------------------------

# The bounds: within a second on SQLite (the owner polls its sessions row), milliseconds on
# Postgres (LISTEN/NOTIFY). Asserted with a margin for a loaded two-core machine.
CANCEL_BOUND = {"sqlite": 1.5, "postgres": 0.5}


async def test_cancel_from_another_process_stops_a_running_session_within_the_bound(
    setup: tuple[Setup, JournaledRuntime],
) -> None:
    s, rt = setup
    async with s.worker("w", s.loop) as w:
        await rt.start("proc.stuck", "stuck")
        await wait_for("the long step runs", lambda: any(e.step == "long" for e in ran(s.log)))
        asked = time.time()
        await rt.cancel("stuck")
        with pytest.raises(SessionCancelledError):
            await rt.result("stuck", timeout=WITHIN)
        seen = time.time() - asked
        await wait_for(
            "the step is stopped", lambda: any(e.what == "stopped" for e in events(s.log))
        )
        stopped = next(e for e in events(s.log) if e.what == "stopped")
        assert (stopped.pid, stopped.session, stopped.step) == (w.pid, "stuck", "long")
        # The worker serves on after the cancel.
        await rt.start("proc.job", "after", 2, 0.0)
        assert await rt.result("after", timeout=WITHIN) == job_result("after", 2)
        assert w.process.returncode is None, w.stderr()
    latency = stopped.at - asked
    print(
        f"\n{s.kind}/{s.loop}: cancel stopped the step {latency * 1000:.0f} ms after it was "
        f"asked; result() saw it after {seen * 1000:.0f} ms"
    )
    assert latency < CANCEL_BOUND[s.kind]
    assert seen < CANCEL_BOUND[s.kind]
    assert await rt.handle("stuck").status() == "cancelled"
    assert await recorded_steps(rt, "stuck") == {"quick"}  # the step in flight recorded nothing
    assert collections.Counter(e.step for e in ran(s.log) if e.session == "stuck") == {
        "quick": 1,
        "long": 1,
    }


# -- 4. result from a third process ----------------------------------------------------------------


async def test_result_from_a_third_process_returns_the_value_or_re_raises_the_failure(
    setup: tuple[Setup, JournaledRuntime],
) -> None:
    s, rt = setup
    # This process starts the sessions, a worker runs them, a third process reads the results:
    # it waits from before they run (the worker starts after it).
    await rt.start("proc.job", "ok", 3, 0.0)
    await rt.start("proc.fails", "bad-value", "value", "bad input: 42")
    await rt.start("proc.fails", "bad-quota", "quota", "over quota (7 calls)")
    await rt.start("proc.job", "dropped", 3, 0.0)
    await rt.cancel("dropped")  # pending: it never runs
    sids = ["ok", "bad-value", "bad-quota", "dropped"]
    async with (
        s.child("reader", "result", OTHER[s.loop], sessions=sids, timeout=WITHIN) as reader,
        s.worker("w", s.loop) as w,
    ):
        await w.expect("serving")
        with anyio.fail_after(WITHIN):
            assert await reader.process.wait() == 0, reader.stderr()
    outcomes = {o.pop("session"): o for o in map(json.loads, reader.lines())}
    assert outcomes == {
        "ok": {"value": job_result("ok", 3)},
        "bad-value": {"type": "builtins.ValueError", "message": "bad input: 42"},
        # The application's own exception type, rebuilt in the reader (it can import it).
        "bad-quota": {"type": "tests.workflow_child.QuotaError", "message": "over quota (7 calls)"},
        "dropped": {
            "type": "jeevesagent.runtime.SessionCancelledError",
            "message": "session 'dropped' was cancelled: it has no result.",
        },
    }
    assert not any(e.session == "dropped" for e in ran(s.log))
    assert {e.session for e in ran(s.log)} == {"ok", "bad-value", "bad-quota"}


# -- 5. interrupted by KeyboardInterrupt or a cancelled serve: resumed by the next worker --------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
async def test_a_session_interrupted_in_a_worker_is_resumed_by_the_next_worker(
    setup: tuple[Setup, JournaledRuntime], how: str
) -> None:
    """SIGINT: the worker's ``anyio.run`` gets a KeyboardInterrupt. SIGTERM: the worker turns it
    into a cancellation of the task group its ``serve`` runs in (the application's shutdown)."""
    s, rt = setup
    steps, gate, hold = 5, s.tmp / "gate", 2
    sids = ["one", "two"]
    for sid in sids:
        await rt.start("proc.job", sid, steps, 0.0, str(gate), hold)
    async with s.worker("first", s.loop) as first:
        await wait_for(
            "both sessions run s2",
            lambda: {e.session for e in ran(s.log) if e.step == f"s{hold}"} == set(sids),
        )
        code = await first.stop(getattr(signal, how))
    print(f"\n{s.kind}/{s.loop}: the worker ended with {code} on {how}")
    assert {sid: await rt.handle(sid).status() for sid in sids} == dict.fromkeys(
        sids, "interrupted"
    ), first.stderr()
    if how == "SIGTERM":
        assert code == 0, first.stderr()
        assert first.lines()[-1] == "stopped"  # serve ended; the runtime and store closed
    else:
        assert code in (-signal.SIGINT, 1), first.stderr()  # KeyboardInterrupt
        assert "KeyboardInterrupt" in first.stderr()
    # The step each session was running was stopped part way, and recorded nothing.
    stopped = {(e.session, e.step) for e in events(s.log) if e.what == "stopped"}
    assert stopped == {(sid, f"s{hold}") for sid in sids}
    for sid in sids:
        assert await recorded_steps(rt, sid) == {"s0", "s1"}
    gate.touch()
    async with s.worker("next", OTHER[s.loop]) as following:
        for sid in sids:
            assert await rt.result(sid, timeout=WITHIN) == job_result(sid, steps)
    counts = check_once_each(s.log, {sid: job_steps(steps) for sid in sids}, {first.pid})
    assert {key for key, n in counts.items() if n == 2} == stopped
    assert {e.pid for e in ran(s.log) if e.step in ("s3", "s4")} == {following.pid}


async def test_ctrl_c_in_a_step_interrupts_the_session_and_the_worker_takes_no_more(
    setup: tuple[Setup, JournaledRuntime],
) -> None:
    """A step presses Ctrl-C (SIGINT to its own worker process), once. asyncio cancels the main
    task; trio raises KeyboardInterrupt in the step itself. Either way the worker ends with the
    session ``interrupted``, and starts nothing more on its way out; the next worker resumes
    the session, running the interrupted step again (it recorded nothing)."""
    s, rt = setup
    marker = s.tmp / "pressed"
    await rt.start("proc.ctrl_c", "ctrl-c", str(marker))
    async with s.worker("first", s.loop) as first:
        with anyio.fail_after(WITHIN):
            code = await first.process.wait()
    assert code in (-signal.SIGINT, 1), first.stderr()
    assert "KeyboardInterrupt" in first.stderr()
    assert await rt.handle("ctrl-c").status() == "interrupted"
    assert [e.step for e in ran(s.log)] == ["before", "press"], first.stderr()
    assert await recorded_steps(rt, "ctrl-c") == {"before"}
    async with s.worker("next", OTHER[s.loop]) as following:
        assert await rt.result("ctrl-c", timeout=WITHIN) == "pressed before"
    assert [(e.pid, e.step) for e in ran(s.log)] == [
        (first.pid, "before"),
        (first.pid, "press"),
        (following.pid, "press"),
        (following.pid, "after"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(1))
async def test_sigint_while_steps_commit_back_to_back_leaves_every_session_resumable(
    setup: tuple[Setup, JournaledRuntime], attempt: int
) -> None:
    """Ctrl+C while three sessions commit steps without pause. Under trio the KeyboardInterrupt
    can land at any bytecode; in the Postgres bridge's hand-off it used to leave a connection
    busy, and another session's next commit then failed, so that session ended ``failed`` and no
    worker resumed it (about 1 run in 8). The hand-off now defers it to its next checkpoint."""
    s, rt = setup
    steps, sids = 150, ["one", "two", "three"]
    for sid in sids:
        await rt.start("proc.job", sid, steps, 0.0)
    async with s.worker("first", s.loop) as first:
        await wait_for("30 steps", lambda: len(ran(s.log)) >= 30)
        await first.stop(signal.SIGINT)
    statuses = {sid: await rt.handle(sid).status() for sid in sids}
    allowed = {"interrupted", "completed"}
    if "TrioInternalError" in first.stderr():
        # Seen once in ~100 runs (tests-versions-3.12): trio raised the KeyboardInterrupt inside
        # its own run loop and died with TrioInternalError, as if killed. Its sessions are then
        # left `running` under a dead owner, which this host takes over at once: the resume
        # below must still finish each of them with every step run once.
        allowed.add("running")
    assert set(statuses.values()) <= allowed, (statuses, first.stderr())
    async with s.worker("next", OTHER[s.loop]):
        for sid in sids:
            assert await rt.result(sid, timeout=WITHIN) == job_result(sid, steps)
    check_once_each(s.log, {sid: job_steps(steps) for sid in sids}, {first.pid})

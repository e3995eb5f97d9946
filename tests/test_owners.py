"""Who owns a session, judged across real processes: owner tokens and pid namespaces, orphans
decided on the store's clock, and several workers recovering the same orphans at once.

A worker in another pid namespace is a child started with ``unshare --pid --fork --mount-proc``
(root only); its pid is chosen so that it names no process in ours, where a bare pid lookup would
take it for dead. A worker whose clock runs ahead is a child process whose ``time.time`` is set an
hour forward. The recovering workers run the guides' start-up recovery code
(docs/examples/recovery.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from jeevesagent.runtime import JournaledRuntime, SessionBusyError
from jeevesagent.runtime._journal.owner import new_owner_id, owner_is_dead, pid_namespace

from .conftest import IN_CI, StoreFactory
from .test_coordination import dead_owner, dead_pid, open_session
from .test_crash import Child, open_store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TIMEOUT = 30  # seconds for one child's handshake (it takes well under one)

durable = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


# -- owner tokens ---------------------------------------------------------------------------------


def test_an_owner_token_names_host_pid_and_pid_namespace() -> None:
    st = os.stat("/proc/self/ns/pid")
    host, where, random = new_owner_id().split(":")
    assert (host, where) == (socket.gethostname(), f"{os.getpid()}@{st.st_dev}.{st.st_ino}")
    assert len(random) == 12
    assert pid_namespace() == f"{st.st_dev}.{st.st_ino}"


async def test_only_a_process_gone_from_our_own_pid_namespace_is_dead() -> None:
    host, pid = socket.gethostname(), await dead_pid()
    assert owner_is_dead(await dead_owner())  # a runtime of this host and namespace that ended
    assert not owner_is_dead(new_owner_id())  # this very process
    assert not owner_is_dead(f"{host}:{pid}:old")  # no namespace (an older version): unprovable
    assert not owner_is_dead(f"{host}:{pid}@4.1:x")  # another pid namespace
    assert not owner_is_dead(f"other-{host}:{pid}@{pid_namespace()}:x")  # another host
    assert not owner_is_dead("not a token")


async def test_a_dead_pid_without_its_namespace_waits_for_the_lease(
    store_factory: StoreFactory,
) -> None:
    # A token written by an older version names no pid namespace: its pid may belong to another
    # container's pid space, so its claim ends only with its lease.
    store = await store_factory.new()
    await store.claim("s", f"{socket.gethostname()}:{await dead_pid()}:old", 30)
    async with JournaledRuntime(await store_factory.new(), poll_interval=0.02) as rt:
        with pytest.raises(SessionBusyError):
            await open_session(rt, "s")
        assert await rt.orphaned_sessions() == []


# -- a live owner in another pid namespace ------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    import anyio
    from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, SqliteJournalStore

    async def main(kind, target):
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target, min_size=1, max_size=2)
            await store.init_schema()
        async with store, JournaledRuntime(store) as rt, rt.session("held"):
            print("holding", rt.owner_id, flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # until the parent says so

    anyio.run(main, *sys.argv[1:3])
    """
)
# Pid 1 of the new namespace: makes the next pid there `wanted`, then runs the holder.
NS_INIT = (
    "import subprocess, sys; "
    "open('/proc/sys/kernel/ns_last_pid', 'w').write(str(int(sys.argv[1]) - 1)); "
    "sys.exit(subprocess.call(sys.argv[2:]))"
)


def free_pid() -> int:
    """A pid that names no process in our namespace (high: not handed out again soon)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def need_unshare() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        message = "a new pid namespace needs unshare(1) and root"
        if IN_CI:
            pytest.fail(message + " (CI=true: this test must run)")
        pytest.skip(message)


@durable
async def test_a_live_owner_in_another_pid_namespace_is_not_taken_over(
    store_factory: StoreFactory, store_target: str, tmp_path: Path
) -> None:
    need_unshare()
    wanted = free_pid()
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    command += [sys.executable, "-c", NS_INIT, str(wanted)]
    command += [sys.executable, "-c", HOLDER, store_factory.kind, store_target]
    async with JournaledRuntime(await store_factory.new(), poll_interval=0.02) as rt:
        err = tmp_path / "holder.err"
        with err.open("wb") as stderr:
            process = await anyio.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=ENV
            )
        async with process:  # kills it if the test fails half way
            holder = Child(process, err)
            with anyio.fail_after(TIMEOUT):
                owner = (await holder.expect("holding ")).split()[1]
            host, where, _ = owner.split(":")
            pid = int(where.partition("@")[0])
            # Same host name, and a pid that names no process here: only the namespace tells
            # that the holder is alive.
            assert (host, pid) == (socket.gethostname(), wanted)
            assert not os.path.exists(f"/proc/{pid}")  # noqa: ASYNC240 -- a stat of /proc
            with pytest.raises(SessionBusyError):
                await open_session(rt, "held")
            assert await rt.orphaned_sessions() == []
            [info] = await rt.list_sessions("running")
            assert info.owner == owner
            await holder.go_on()
            with anyio.fail_after(TIMEOUT):
                assert await process.wait() == 0, holder.stderr()
        async with rt.session("held"):  # released by its owner: free again
            pass


# -- orphans are decided on the store's clock -----------------------------------------------------

SKEWED = textwrap.dedent(
    """
    import sys, time
    real_time = time.time
    time.time = lambda: real_time() + 3600.0  # this worker's clock runs an hour ahead

    import anyio
    from jeevesagent.runtime import PostgresRuntime

    async def main(dsn):
        async with await PostgresRuntime.connect(dsn, min_size=1, max_size=1) as rt:
            print(" ".join(i.session_id for i in await rt.orphaned_sessions()) or "-")

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.parametrize("store_kind", ["postgres"])
async def test_a_worker_whose_clock_runs_ahead_lists_no_live_session_as_orphaned(
    store_factory: StoreFactory, store_target: str
) -> None:
    store = await store_factory.new()
    await store.claim("lost", "otherhost:9:z", 0.05)  # a host gone; its lease ends at once
    async with JournaledRuntime(await store_factory.new(), lease=30) as rt, rt.session("live"):
        with anyio.fail_after(TIMEOUT):
            while [i.session_id for i in await rt.orphaned_sessions()] != ["lost"]:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            result = await anyio.run_process(
                [sys.executable, "-c", SKEWED, store_target], env=ENV, check=False
            )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().split() == ["lost"]


# -- several workers recover the same orphans at once ---------------------------------------------

ORPHANS = [f"order-{i}" for i in range(5)]

# Opens every order's session and holds them all, until it is killed.
ORPHANER = textwrap.dedent(
    """
    import contextlib, sys
    import anyio
    from jeevesagent.runtime import JournaledRuntime, PostgresJournalStore, SqliteJournalStore

    async def main(kind, target, *orders):
        if kind == "sqlite":
            store = SqliteJournalStore(target)
        else:
            store = await PostgresJournalStore.connect(target, min_size=1, max_size=2)
            await store.init_schema()
        async with store, JournaledRuntime(store) as rt, contextlib.AsyncExitStack() as stack:
            for order in orders:
                await stack.enter_async_context(rt.session(order))
            print("holding", flush=True)
            await anyio.sleep_forever()

    anyio.run(main, *sys.argv[1:])
    """
)

# Runs before the guides' recovery code: its charge step logs and then waits at a gate.
PRELUDE = textwrap.dedent(
    """
    import os, sys
    import anyio
    from jeevesagent.runtime import PostgresRuntime

    TARGET, LOG, GATE, WHO = sys.argv[1:5]

    async def charge(session_id):
        with open(LOG, "a") as log:
            log.write(f"{WHO} {session_id}\\n")
        print("charging", session_id, flush=True)
        while not os.path.exists(GATE):
            await anyio.sleep(0.01)
        return "charged"
    """
)


def recovery_worker(kind: str) -> str:
    """The guides' start-up recovery (docs/examples/recovery.py), with a charge step that tells
    when it runs."""
    code = (ROOT / "docs" / "examples" / "recovery.py").read_text()
    edits = {'lambda: "charged"': "lambda: charge(session_id)"}
    if kind == "postgres":
        edits['SqliteRuntime("orders.sqlite3")'] = "await PostgresRuntime.connect(TARGET)"
    for old, new in edits.items():
        assert code.count(old) == 1, f"docs/examples/recovery.py no longer has {old!r}"
        code = code.replace(old, new)
    return PRELUDE + code


@durable
async def test_two_workers_recovering_the_same_orphans_resume_each_once(
    store_factory: StoreFactory, store_target: str, tmp_path: Path
) -> None:
    target = str(tmp_path / "orders.sqlite3") if store_factory.kind == "sqlite" else store_target
    kind = store_factory.kind
    log = tmp_path / "charges.log"
    code = recovery_worker(kind)

    @contextlib.asynccontextmanager
    async def start(*argv: str, name: str) -> AsyncIterator[tuple[Process, Child]]:
        err = tmp_path / f"{name}.err"
        with err.open("wb") as stderr:
            process = await anyio.open_process(
                [sys.executable, "-c", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=ENV,
                cwd=tmp_path,
            )
        try:
            yield process, Child(process, err)
        finally:
            if process.returncode is None:  # the test failed half way: it may wait at its gate
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.aclose()

    # A worker dies (SIGKILL) holding five sessions, none of them charged yet.
    async with start(ORPHANER, kind, target, *ORPHANS, name="orphaner") as (_, child):
        with anyio.fail_after(TIMEOUT):
            await child.expect("holding")
            await child.kill_and_drain()
    store = await open_store(kind, target)
    async with store, JournaledRuntime(store) as rt:
        assert [i.session_id for i in await rt.orphaned_sessions()] == ORPHANS

        # Two workers recover, in an order that makes them meet: A resumes order-0 and is held
        # in its charge; B, started then, resumes order-1 and is held too; A goes on, finds
        # order-1 busy (B has it) and must skip it, not crash; B goes on last.
        gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
        async with start(code, target, str(log), str(gate_a), "A", name="a") as (a, a_out):
            with anyio.fail_after(TIMEOUT):
                assert (await a_out.expect("charging")).split() == ["charging", "order-0"]
            async with start(code, target, str(log), str(gate_b), "B", name="b") as (b, b_out):
                with anyio.fail_after(TIMEOUT):
                    assert (await b_out.expect("charging")).split() == ["charging", "order-1"]
                gate_a.touch()
                with anyio.fail_after(TIMEOUT):
                    assert await a.wait() == 0, a_out.stderr()
                gate_b.touch()
                with anyio.fail_after(TIMEOUT):
                    assert await b.wait() == 0, b_out.stderr()

        charges = collections.Counter(line.split()[1] for line in log.read_text().splitlines())
        assert charges == collections.Counter([*ORPHANS, "order-43"])  # each once, none skipped
        assert await rt.orphaned_sessions() == []
        statuses = {i.session_id: i.status for i in await rt.list_sessions()}
        assert statuses == dict.fromkeys([*ORPHANS, "order-43"], "completed")

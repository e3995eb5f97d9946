"""The worker of a journaled runtime (``serve``): it runs the pending sessions of the workflows it
serves, and resumes their interrupted and orphaned ones, continuously, at most ``concurrency`` at
a time, inside the caller's task group, until it is cancelled.

Many workers, in many processes and hosts, share one store: each session is claimed before it
runs, and a claim is granted to one runtime only, so a session a peer took first is skipped.
A worker wakes when the store says something changed (a session was started, ended, suspended or
signalled: Postgres NOTIFY, the in-process stores), when the earliest timer of its suspended
sessions is due, and otherwise polls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from .._errors import SessionBusyError, SessionCancelledError
from .._journal.backend import JournalBackend, SessionInfo
from .claims import orphaned, suspension_of
from .signals import SignalInbox
from .workflows import Engine

__all__ = ["Worker"]

log = logging.getLogger("jeevesagent.runtime")


class Worker:
    """Serves the workflows ``workflows`` (name -> function) through ``engine``."""

    def __init__(
        self,
        engine: Engine,
        backend: JournalBackend,
        inbox: SignalInbox,
        workflows: dict[str, Callable[..., Coroutine[Any, Any, Any]]],
        concurrency: int,
        poll_interval: float,
        suspend_after: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        if not workflows:
            raise ValueError("serve() needs at least one workflow to serve")
        self.engine = engine
        self.backend = backend
        self.inbox = inbox
        self.workflows = workflows
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.suspend_after = suspend_after
        self.running: set[str] = set()
        self._changed = anyio.Event()

    def _notice(self, session_id: str) -> None:
        self._changed.set()

    async def serve(self, task_status: TaskStatus[None]) -> None:
        names = sorted(self.workflows)
        started = False
        async with anyio.create_task_group() as tg:
            while True:
                # Stop here if the worker is being stopped: a session's task that ended with an
                # error (a KeyboardInterrupt raised in it, on trio) woke this loop before the
                # task group was cancelled, and the store calls below may not check for it.
                await anyio.lowlevel.checkpoint()
                self._changed = anyio.Event()
                pushed = await self.backend.watch(self._notice)
                free = self.concurrency - len(self.running)
                if free > 0:
                    for info in await self.runnable(names, free):
                        self.running.add(info.session_id)
                        tg.start_soon(self._run, info)
                if not started:
                    started = True
                    task_status.started()
                wait = 1.0 if pushed else self.poll_interval
                # A suspended session's timer: wake when the earliest one is due.
                due = await self.backend.wake_in(names)
                if due is not None and 0 < due < wait:
                    wait = due
                with anyio.move_on_after(wait):
                    await self._changed.wait()

    async def runnable(self, names: list[str], limit: int) -> list[SessionInfo]:
        """Sessions of ``names`` to run now, oldest first: pending ones, interrupted or
        orphaned ones (see :func:`orphaned`), and suspended ones whose signal came or whose
        time is up."""
        more = limit + len(self.running)
        found = await self.backend.list_sessions("pending", workflows=names, limit=more)
        found += await orphaned(self.backend, names, more)
        found += await self.backend.resumable(names, more)
        found = [i for i in found if i.session_id not in self.running]
        found.sort(key=lambda i: (i.created_at, i.session_id))
        return found[:limit]

    async def _run(self, info: SessionInfo) -> None:
        sid = info.session_id
        try:
            assert info.workflow is not None
            fn = self.workflows[info.workflow]
            await self.engine.run_body(sid, fn, None, None, 0, self.suspend_after)
        except (SessionBusyError, SessionCancelledError):
            pass  # a peer took it first, or it was cancelled: nothing to do here
        except Exception:
            # The failure is journaled and the session ended "failed"; the worker goes on.
            log.warning("session %r (workflow %r) failed", sid, info.workflow, exc_info=True)
        except BaseException as exc:
            if suspension_of(exc) is None:
                raise
            # Suspended: recorded "waiting"; a worker runs it again when its wait is over.
            log.debug("session %r suspended: %s", sid, exc)
        finally:
            self.running.discard(sid)
            # Drop the session's wake-up event (its waiters, if any, wake and look again): a
            # worker that suspends thousands of sessions keeps nothing of them.
            self.inbox.wake(sid)
            self._changed.set()

"""One timer per open session, kept by a task the session runs anyway: :class:`SessionAlarm`.

The claim heartbeat of a session (see ``ClaimHolder.renew``) sleeps most of the time. It sleeps
through the session's alarm, so other code of the session can ask for a function to be called at
a time -- a running stream step, to journal the chunks waiting behind a producer that stalls --
without starting a task of its own. Asking costs a list append and, when the time is earlier than
the sleeper's deadline, moving that deadline (an anyio cancel scope's, a public setter); the
functions run in the sleeping task, and start a task only if there is work to do then.

Nothing is lost when no task serves the alarm: :meth:`SessionAlarm.call_at` says so (no claim,
or the heartbeat ended) and the caller makes its own arrangements; a function asked for while
the heartbeat is started but not running yet, or moving to another context of the session, is
called by the task that serves the alarm next; and the functions still waiting when the last
server stops are called at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import anyio

__all__ = ["SessionAlarm"]


class SessionAlarm:
    """Functions to call at given times (``anyio.current_time()``), called by the task that
    sleeps through :meth:`sleep` inside :meth:`serving`."""

    __slots__ = ("_due", "_scope", "_serving", "kept")

    def __init__(self) -> None:
        self._due: list[tuple[float, Callable[[], object]]] = []
        self._scope: anyio.CancelScope | None = None  # of the sleep in progress
        self._serving = 0
        # A task serves the alarm, or was started to: set by whoever starts it, cleared when a
        # server ends other than by a cancellation (after which a successor may take over).
        self.kept = False

    def call_at(self, when: float, fn: Callable[[], object]) -> bool:
        """Call ``fn()`` (it must not raise, nor block) once ``anyio.current_time()`` reaches
        ``when``, or earlier if the alarm stops being served. ``False``: nothing serves the alarm
        now, ``fn`` will not be called."""
        if not self.kept:
            return False
        self._due.append((when, fn))
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when  # wakes the sleeper then
        return True

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """The current task serves the alarm (it sleeps through :meth:`sleep`) until it leaves
        this block; the last one to leave calls what is still waiting, at once. A server that
        ends other than by a cancellation ends the alarm (:attr:`kept`)."""
        self._serving += 1
        try:
            yield
        except anyio.get_cancelled_exc_class():
            raise  # the session's context ends; the heartbeat may go on in another one
        except BaseException:
            self.kept = False
            raise
        else:
            self.kept = False
        finally:
            self._serving -= 1
            if not self._serving:
                due, self._due = self._due, []
                for _, fn in due:
                    fn()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, calling the functions that fall due meanwhile."""
        until = anyio.current_time() + seconds
        while True:
            deadline = min([until, *(when for when, _ in self._due)])
            with anyio.CancelScope(deadline=deadline) as scope:
                self._scope = scope
                try:
                    await anyio.sleep_forever()
                finally:
                    self._scope = None
            now = anyio.current_time()
            if self._due:
                self._call_due(now)
            if now >= until:
                return

    def _call_due(self, now: float) -> None:
        due = [entry for entry in self._due if entry[0] <= now]
        if due:
            self._due = [entry for entry in self._due if entry[0] > now]
            for _, fn in due:
                fn()

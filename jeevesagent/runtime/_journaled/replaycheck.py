"""``check_replay``: a test helper for users' own workflows. It runs a workflow once on a fresh
journal, then again interrupted after each recorded step in turn and resumed, and fails -- naming
the step -- when a resumed run returns another result, records other steps, or runs the function
of a step that was already recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._core.keys import describe_key, is_workflow_key
from .._core.registry import registered_workflow
from .._journal.memory import InMemoryJournalStore
from .._journal.rows import Record, Row
from .runtime import JournaledRuntime

__all__ = ["ReplayCheckError", "check_replay"]


class ReplayCheckError(AssertionError):
    """A workflow does not replay deterministically (see :func:`check_replay`)."""


class _Crash(Exception):
    """The simulated end of a process: nothing after it is recorded."""


class _InterruptingStore(InMemoryJournalStore):
    """An in-memory store that, once ``limit`` step records are committed, refuses every later
    write: as if the process died right after that commit (the next step's function may have
    run, as it may before a real crash; its result is not recorded)."""

    def __init__(self) -> None:
        super().__init__(signing_key="")
        self.limit: int | None = None
        self.crashed = False
        self.steps_recorded: list[str] = []

    async def write_rows(
        self, records: Sequence[Record], owners: Mapping[str, str] | None = None
    ) -> dict[tuple[str, int, str], Row]:
        if self.limit is not None and len(self.steps_recorded) >= self.limit:
            self.crashed = True
            raise _Crash("check_replay: the simulated crash")
        conflicts = await super().write_rows(records, owners)
        self.steps_recorded += [r.key for r in records if not is_workflow_key(r.key)]
        return conflicts


_INTERRUPTED = object()


async def _run(
    store: _InterruptingStore, wf: Callable[..., Any] | str, args: Any, kwargs: Any
) -> Any:
    """Run the workflow on ``store`` in a new runtime: its result, or ``_INTERRUPTED``."""
    async with JournaledRuntime(store) as rt:
        try:
            return await rt.run(wf, "check-replay", *args, **kwargs)
        except Exception:
            if not store.crashed:
                raise
            return _INTERRUPTED


async def check_replay(wf: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
    """Check that workflow ``wf`` resumes correctly from every step; return its result.

    Runs ``wf(*args, **kwargs)`` (a ``@workflow`` function or its name) on a fresh in-memory
    journal. Then, for each step it recorded,
    runs it on another fresh journal, stops it right after that step is committed (as a crash
    would), and runs it again to the end. Raises :class:`ReplayCheckError` (an
    ``AssertionError``), naming the step, when a resumed run returns a result that differs,
    records a step the first run did not (the workflow is not deterministic: it took another
    path, or called a step with other arguments), or runs the function of a step that was
    already recorded. Use it in your tests (``await check_replay(my_workflow, "input")``); the
    step functions really run, so give them test doubles for paid or harmful effects. A
    workflow that waits for a signal waits here too: give such waits a ``timeout``.
    """
    registered_workflow(wf)  # fail early on an unregistered function
    reference = _InterruptingStore()
    expected = await _run(reference, wf, args, kwargs)
    steps = list(reference.steps_recorded)
    for k in range(1, len(steps) + 1):
        store = _InterruptingStore()
        store.limit = k
        first = await _run(store, wf, args, kwargs)
        at = describe_key(steps[k - 1])
        if first is not _INTERRUPTED:
            raise ReplayCheckError(
                f"interrupting after step {at!r} (step {k} of {len(steps)}) did not stop the "
                "workflow: it recorded fewer steps than on its first run"
            )
        store.limit, store.crashed = None, False
        recorded_before = list(store.steps_recorded)
        result = await _run(store, wf, args, kwargs)
        if store.steps_recorded != steps:
            extra = [describe_key(s) for s in store.steps_recorded if s not in steps]
            again = [s for s, n in Counter(store.steps_recorded).items() if n > 1]
            if again:
                what = f"ran step {describe_key(again[0])!r} again though it was recorded"
            elif extra:
                what = f"recorded step {extra[0]!r}, which the first run did not"
            else:
                what = "recorded other steps than the first run"
            raise ReplayCheckError(
                f"resumed after step {at!r} (step {k} of {len(steps)}), the workflow {what}: "
                f"first run {[describe_key(s) for s in steps]}, interrupted run "
                f"{[describe_key(s) for s in recorded_before]} then resumed to "
                f"{[describe_key(s) for s in store.steps_recorded]}. Make the workflow "
                "deterministic: the same steps, with the same arguments, in the same order."
            )
        if result != expected:
            raise ReplayCheckError(
                f"resumed after step {at!r} (step {k} of {len(steps)}), the workflow returned "
                f"{result!r}, not {expected!r} as on its first run"
            )
    return expected

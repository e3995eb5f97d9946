"""``TemporalRuntime``: a :class:`JournaledRuntime` whose journal and mailbox are a Temporal
cluster (extra ``[temporal]``; asyncio only).

**Why a JournalBackend, not a runtime of its own.** Temporal is used as storage: one workflow
execution per session id holds the session's journal, mailbox and sessions row
(``_temporal/workflow.py``), and :class:`TemporalJournalStore` (``_temporal/store.py``) maps the
public ``JournalBackend`` contract onto it (writes are Updates, signals are Signals, reads are
Queries). ``JournaledRuntime`` then gives exactly the semantics of every other runtime -- step
keys, fingerprints, codecs and signing, policies, streams, claims and leases, fencing,
``@workflow`` runs, ``serve``, suspension -- and the store passes the same conformance suite
(``jeevesagent.runtime.testing``). A runtime of its own would have duplicated all of that for
no gain in speed: the cost of a step is the Temporal round trip either way (one Update, ~4-20 ms
on a local dev server; see ``benchmarks/adapter_temporal.py``), not the runtime's bookkeeping.
A Signal per step (~7 ms in the probe) was not used: a Signal cannot report a fenced write or
the first writer's value, which the contract requires.

**Which Temporal guarantees apply.** A step's record is an Update completed in the session's
workflow history, so once ``step`` returns it survives the crash of this process, of the worker
and of a Temporal server with durable persistence (the dev server's in-memory default keeps
nothing across its own restart; give it ``--db-filename``). Temporal does *not* run the user's
code: the session body and the step functions run in the caller's process, with no activity
retries, timeouts or heartbeats from Temporal (use ``StepPolicy`` for those), and Temporal never
re-runs a session body by itself -- run it again (or under ``rt.serve``) to resume. Signals are
Temporal Signals (signal-with-start), durable once sent. ``rt.sleep`` journals its wake-up time
like every journaled runtime (no workflow timer: nothing in Temporal would act on it).

**History limits.** Every write adds about 5 events to the session workflow's history (a claim,
a lease renewal every ``lease / 3`` seconds, each step, each signal received). When the server
suggests it (``is_continue_as_new_suggested``: by default at a few thousand events, long before
the 50k-event and 50 MB hard limits) the workflow continues-as-new, carrying its state. The whole
journal of a session then travels as one payload, and ``open_session`` returns it in one Update
result: a session's journal must stay under Temporal's payload limit (2 MB by default). Use it
for sessions of modest size; keep large values elsewhere and journal references.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from temporalio.client import Client

from .._core.values import Codec
from .._journaled.runtime import JournaledRuntime
from .store import TemporalJournalStore, require_asyncio

__all__ = ["TemporalJournalStore", "TemporalRuntime", "require_asyncio"]


class TemporalRuntime(JournaledRuntime):
    """A :class:`JournaledRuntime` over a Temporal cluster (see the module docstring).

    ``await TemporalRuntime.connect("localhost:7233")`` connects a client too; or pass a
    connected ``temporalio.client.Client``. Every process that shares sessions must use the
    same namespace, ``task_queue`` and ``id_prefix``. Each runtime runs a Temporal worker for
    the session workflows from its first use until ``aclose()``.
    """

    name = "temporal"

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = "jeevesagent",
        id_prefix: str | None = None,
        sticky_timeout: float = 1.0,
        durability: Literal["commit", "buffered"] = "commit",
        flush_interval: float = 0.05,
        poll_interval: float = 0.25,
        codec: str | Codec | None = None,
        signing_key: str | bytes | None = None,
        **options: Any,
    ) -> None:
        """``sticky_timeout``: see :class:`TemporalJournalStore`. ``codec``, ``signing_key``: see
        :class:`SqliteJournalStore`. ``poll_interval``: how often a waiting receiver asks for a
        signal sent from another process (a rejected Update: no history event). ``options``:
        the other keyword options of :class:`JournaledRuntime`."""
        store = TemporalJournalStore(
            client,
            task_queue=task_queue,
            id_prefix=id_prefix,
            sticky_timeout=sticky_timeout,
            codec=codec,
            signing_key=signing_key,
        )
        super().__init__(
            store,
            durability=durability,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            **options,
        )
        self._owns_store = True
        self.client = client

    @classmethod
    async def connect(
        cls, target: str = "localhost:7233", *, namespace: str = "default", **options: Any
    ) -> Self:
        """Connect a client to the Temporal frontend at ``target`` and return a runtime on it.
        ``options``: those of :class:`TemporalRuntime`."""
        require_asyncio("TemporalRuntime")
        client = await Client.connect(target, namespace=namespace)
        return cls(client, **options)

"""The Temporal store passes the exported conformance suite, on a real dev server."""

from __future__ import annotations

import pytest

from jeevesagent.runtime.testing import BackendOpener, JournalBackendConformance


class TestTemporalStore(JournalBackendConformance):
    @pytest.fixture
    def open_backend(self, temporal_target: str, task_queue: str) -> BackendOpener:
        from temporalio.client import Client

        from jeevesagent.runtime._temporal.store import TemporalJournalStore

        async def connect() -> TemporalJournalStore:
            client = await Client.connect(temporal_target)
            return TemporalJournalStore(client, task_queue=task_queue, sticky_timeout=0.5)

        return connect

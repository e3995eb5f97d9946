"""Observability: log records of the ``jeevesagent.runtime`` logger (levels, ids, step names, and
never a value) and OpenTelemetry spans (a session span with step spans as children, replayed on
the second run, errors recorded, cancellation not).

OpenTelemetry's global tracer provider can be set once per process: ``otel`` sets it once, with a
sampler that records only while a test holds the ``spans`` fixture, so the tests that run after
this module see a configured provider that records nothing. Behaviour with no provider at all,
and without the package, is tested in subprocesses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jeevesagent.runtime import InProcRuntime, JournaledRuntime, SessionBusyError, StepPolicy

from .conftest import StoreFactory

LOGGER = "jeevesagent.runtime"
SECRET = "s3cr3t-VALUE-7f9e"  # an argument, result, chunk and payload: must never be logged
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def secret_work(x: str) -> str:
    return f"{x}-result"


async def secret_chunks(x: str) -> AsyncIterator[str]:
    for i in range(3):
        yield f"{x}-chunk-{i}"


def our_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(LOGGER)]


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in our_records(caplog) if level is None or r.levelno == level]


def assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)
        assert SECRET not in repr(record.__dict__)


async def agent(rt: Any, session_id: str) -> None:
    """A session with a step, a stream step and a signal round trip, all carrying SECRET."""
    async with rt.session(session_id):
        assert await rt.step("greet", secret_work, SECRET) == f"{SECRET}-result"
        chunks = [c async for c in rt.stream_step("tokens", secret_chunks, SECRET)]
        assert chunks == [f"{SECRET}-chunk-{i}" for i in range(3)]
        await rt.signal(session_id, "approve", {"token": SECRET})
        assert await rt.wait_for_signal(session_id, "approve", timeout=5) == {"token": SECRET}


# -- logging --------------------------------------------------------------------------------------


async def test_session_steps_streams_and_signals_are_logged_without_values(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with JournaledRuntime(store) as rt:
        await agent(rt, "obs-log")
    first = messages(caplog)
    caplog.clear()
    async with JournaledRuntime(store) as rt:
        await agent(rt, "obs-log")
    second = messages(caplog)

    [opened] = messages_at(first, "opened")
    assert "'obs-log'" in opened
    assert "resumed=False" in opened
    assert "runtime=journaled" in opened
    [closed] = messages_at(first, "closed")
    assert "status=completed" in closed
    assert "executed=2" in closed  # the step and the stream step
    assert "replayed=0" in closed
    assert any("step 'greet' executed" in m for m in first)
    assert any("stream step 'tokens' executed" in m for m in first)
    assert any("signal 'approve' sent" in m for m in first)
    assert any("signal 'approve' received" in m for m in first)

    [opened] = messages_at(second, "opened")
    assert "resumed=True" in opened
    assert "1 recorded steps, 1 streams, 1 signal receipts loaded" in opened
    [closed] = messages_at(second, "closed")
    assert "executed=0" in closed
    assert "replayed=2" in closed
    assert any("step 'greet' replayed" in m for m in second)
    assert any("stream step 'tokens' replayed" in m for m in second)
    assert not any("executed" in m for m in second if "closed" not in m)

    levels = {r.getMessage(): r.levelno for r in our_records(caplog)}
    assert levels[opened] == logging.INFO
    assert levels[closed] == logging.INFO
    per_item = [level for message, level in levels.items() if "': " in message]
    assert len(per_item) == 4  # the step, the stream step, the signal sent and received
    assert set(per_item) == {logging.DEBUG}
    assert_no_secret(caplog)


def messages_at(all_messages: list[str], word: str) -> list[str]:
    """The session-level lines: "session 'id' opened (...)" or "... closed (...)"."""
    return [m for m in all_messages if f"' {word} (" in m]


async def test_failures_are_logged_by_type_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def fail(x: str) -> None:
        raise ValueError(f"bad input {x}")

    async with JournaledRuntime() as rt:
        with pytest.raises(ValueError, match="bad input"):
            async with rt.session("obs-fail"):
                await rt.step("explode", fail, SECRET)
    found = messages(caplog)
    assert any("step 'explode' failed (ValueError)" in m for m in found)
    [closed] = [m for m in found if "closed" in m]
    assert "status=failed" in closed
    assert "executed=0" in closed
    assert_no_secret(caplog)


async def test_a_journaled_failure_replays_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def fail(x: str) -> None:
        raise ValueError(f"bad input {x}")

    async with JournaledRuntime(policy=StepPolicy(journal_failures=True)) as rt:
        for _ in range(2):
            with pytest.raises(ValueError, match="bad input"):
                async with rt.session("obs-jf"):
                    await rt.step("explode", fail, SECRET)
    assert any("step 'explode' replayed (a journaled failure)" in m for m in messages(caplog))
    assert_no_secret(caplog)


async def test_a_cancelled_session_is_logged_as_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with JournaledRuntime() as rt:
        with anyio.move_on_after(0.05):
            async with rt.session("obs-cancel"):
                await rt.step("slow", anyio.sleep, 5)
    found = messages(caplog)
    assert any("step 'slow' cancelled" in m for m in found)
    [closed] = [m for m in found if "closed" in m]
    assert "status=cancelled" in closed


async def test_nothing_is_logged_above_debug_per_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with JournaledRuntime() as rt:
        for _ in range(2):
            await agent(rt, "obs-info")
    found = messages(caplog)
    assert len(found) == 4  # opened and closed, twice
    assert all(r.levelno == logging.INFO for r in our_records(caplog))


async def test_inproc_runtime_logs_sessions_and_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with InProcRuntime() as rt:
        await agent(rt, "obs-inproc")
    found = messages(caplog)
    assert any("'obs-inproc' opened (store=none, runtime=inproc, no journal)" in m for m in found)
    assert any("step 'greet' executed" in m for m in found)
    assert any("stream step 'tokens' executed" in m for m in found)
    assert any("signal 'approve' received" in m for m in found)
    assert any("status=completed" in m and "executed=2" in m for m in found)
    assert_no_secret(caplog)


async def test_a_fenced_step_is_a_warning(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    other = await store_factory.new()
    async with JournaledRuntime(await store_factory.new(), lease=30) as rt:

        async def run() -> None:
            async with rt.session("obs-fenced"):
                await rt.step("before", secret_work, SECRET)
                await other.release("obs-fenced", rt.owner_id, "failed", 0)
                await other.claim("obs-fenced", "otherhost:2:y", 30)
                await rt.step("after", secret_work, SECRET)

        with pytest.raises(SessionBusyError):
            await run()
    warnings = messages(caplog, logging.WARNING)
    assert any("'obs-fenced'" in m and "refused (fenced)" in m for m in warnings), warnings
    assert_no_secret(caplog)


async def test_a_lost_claim_is_a_warning(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    other = await store_factory.new()
    async with JournaledRuntime(await store_factory.new(), lease=0.3) as rt:

        async def run() -> None:
            async with rt.session("obs-lost"):
                await other.release("obs-lost", rt.owner_id, "failed", 0)
                await other.claim("obs-lost", "otherhost:2:y", 30)
                await anyio.sleep(5)

        with pytest.raises(SessionBusyError):
            await run()
    warnings = messages(caplog, logging.WARNING)
    assert any("'obs-lost'" in m and "lost its claim" in m for m in warnings), warnings


# -- OpenTelemetry --------------------------------------------------------------------------------


class Capture:
    """The test exporter, and the switch of the sampler that records only while a test runs."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.on = False

    def finished(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[Any]:
        return [s for s in self.finished() if s.name == name]


@pytest.fixture(scope="module")
def otel() -> Iterator[Capture]:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    provider = trace.get_tracer_provider()
    capture: Capture | None = getattr(provider, "_jeevesagent_capture", None)
    if capture is None:

        class Switch(Sampler):
            def should_sample(
                self,
                parent_context: Any,
                trace_id: int,
                name: str,
                kind: Any = None,
                attributes: Any = None,
                links: Any = None,
                trace_state: Any = None,
            ) -> SamplingResult:
                assert capture is not None
                if capture.on:
                    return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
                return SamplingResult(Decision.DROP)

            def get_description(self) -> str:
                return "jeevesagent-tests"

        exporter = InMemorySpanExporter()
        capture = Capture(exporter)
        provider = TracerProvider(sampler=Switch())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider._jeevesagent_capture = capture  # type: ignore[attr-defined]
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another tracer provider was set first"
    yield capture
    capture.on = False
    capture.exporter.clear()


@pytest.fixture
def spans(otel: Capture) -> Iterator[Capture]:
    otel.exporter.clear()
    otel.on = True
    try:
        yield otel
    finally:
        otel.on = False
        otel.exporter.clear()


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_session_span_with_step_spans_replayed_on_the_second_run(
    store: Any, store_kind: str, spans: Capture
) -> None:
    from opentelemetry import trace

    before = trace.get_current_span()
    async with JournaledRuntime(store) as rt:
        await agent(rt, "obs-span")
    assert trace.get_current_span() is before  # the session's context did not outlive it
    first = spans.finished()
    spans.exporter.clear()
    async with JournaledRuntime(store) as rt:
        await agent(rt, "obs-span")
    second = spans.finished()

    for run, replayed in ((first, False), (second, True)):
        [session] = [s for s in run if s.name == "jeevesagent.session"]
        [step] = [s for s in run if s.name == "jeevesagent.step"]
        [stream] = [s for s in run if s.name == "jeevesagent.stream_step"]
        common = {
            "jeevesagent.session_id": "obs-span",
            "jeevesagent.store": store_kind,
            "jeevesagent.runtime": "journaled",
        }
        assert attrs(session).items() >= common.items()
        assert attrs(session)["jeevesagent.status"] == "completed"
        assert attrs(session)["jeevesagent.resumed"] is replayed
        assert attrs(step) == {
            **common,
            "jeevesagent.step": "greet",
            "jeevesagent.replayed": replayed,
        }
        assert attrs(stream) == {
            **common,
            "jeevesagent.step": "tokens",
            "jeevesagent.replayed": replayed,
        }
        for child in (step, stream):
            assert child.parent is not None
            assert child.parent.span_id == session.context.span_id
            assert child.context.trace_id == session.context.trace_id
            assert session.start_time <= child.start_time <= child.end_time <= session.end_time
        assert session.status.is_ok
        assert step.status.is_ok
        for span in run:
            assert SECRET not in repr(span.to_json())


async def test_step_spans_parent_spans_of_the_step_function(spans: Capture) -> None:
    from opentelemetry import trace

    tracer = trace.get_tracer("tests")

    async def traced_work() -> int:
        with tracer.start_as_current_span("inside"):
            await anyio.lowlevel.checkpoint()
        return 1

    async with (
        InProcRuntime() as rt,
        rt.session("obs-nested"),
        anyio.create_task_group() as tg,  # the context flows into child tasks
    ):
        for i in range(3):
            tg.start_soon(rt.step, f"work_{i}", traced_work)

    [session] = spans.named("jeevesagent.session")
    steps = spans.named("jeevesagent.step")
    insides = spans.named("inside")
    assert len(steps) == len(insides) == 3
    assert {s.parent.span_id for s in steps} == {session.context.span_id}
    assert {s.parent.span_id for s in insides} == {s.context.span_id for s in steps}
    assert all(attrs(s)["jeevesagent.store"] == "none" for s in [session, *steps])
    assert all(attrs(s)["jeevesagent.runtime"] == "inproc" for s in [session, *steps])


async def test_a_stream_step_span_parents_the_producer_spans(store: Any, spans: Capture) -> None:
    from opentelemetry import trace

    tracer = trace.get_tracer("tests")

    async def producer() -> AsyncIterator[int]:
        for i in range(2):
            with tracer.start_as_current_span(f"chunk_{i}"):
                yield i

    async with JournaledRuntime(store) as rt, rt.session("obs-producer"):
        assert [c async for c in rt.stream_step("numbers", producer)] == [0, 1]
        with tracer.start_as_current_span("consumer"):
            pass  # the consumer is outside the stream step's span again
    [stream] = spans.named("jeevesagent.stream_step")
    [session] = spans.named("jeevesagent.session")
    assert [s.parent.span_id for s in spans.named("chunk_0") + spans.named("chunk_1")] == [
        stream.context.span_id
    ] * 2
    [consumer] = spans.named("consumer")
    assert consumer.parent.span_id == session.context.span_id


async def test_a_failing_step_records_an_error_and_the_session_span_ends(
    store: Any, spans: Capture
) -> None:
    from opentelemetry.trace import StatusCode

    boom = RuntimeError("boom")

    def fail() -> None:
        raise boom

    async with JournaledRuntime(store) as rt:
        with pytest.raises(RuntimeError) as caught:
            async with rt.session("obs-err"):
                await rt.step("explode", fail)
    assert caught.value is boom  # unchanged, not wrapped in a group
    [step] = spans.named("jeevesagent.step")
    assert step.status.status_code is StatusCode.ERROR
    assert [e.name for e in step.events] == ["exception"]
    assert step.events[0].attributes["exception.type"] == "RuntimeError"
    [session] = spans.named("jeevesagent.session")
    assert session.end_time is not None
    assert session.status.status_code is StatusCode.ERROR
    assert attrs(session)["jeevesagent.status"] == "failed"


async def test_the_session_span_ends_when_the_body_raises(spans: Capture) -> None:
    from opentelemetry import trace

    class Oops(Exception):
        pass

    oops = Oops()
    before = trace.get_current_span()
    async with JournaledRuntime() as rt:

        async def run() -> None:
            async with rt.session("obs-body"):
                await rt.step("fine", secret_work, SECRET)
                raise oops

        with pytest.raises(Oops) as caught:
            await run()
    assert caught.value is oops
    assert trace.get_current_span() is before
    [session] = spans.named("jeevesagent.session")
    assert session.end_time is not None
    assert attrs(session)["jeevesagent.status"] == "failed"
    [step] = spans.named("jeevesagent.step")
    assert step.status.is_ok


async def test_cancellation_is_not_an_error_and_is_not_swallowed(spans: Capture) -> None:
    from opentelemetry.trace import StatusCode

    reached_after = False
    async with JournaledRuntime() as rt:
        with anyio.move_on_after(0.05) as scope:
            async with rt.session("obs-cancel"):
                await rt.step("slow", anyio.sleep, 5)
                reached_after = True
    assert scope.cancelled_caught
    assert not reached_after
    [step] = spans.named("jeevesagent.step")
    [session] = spans.named("jeevesagent.session")
    for span in (step, session):
        assert span.status.status_code is StatusCode.UNSET
        assert attrs(span)["jeevesagent.cancelled"] is True
        assert not span.events
    assert attrs(session)["jeevesagent.status"] == "cancelled"


async def test_a_stream_closed_early_or_abandoned_ends_its_span(spans: Capture) -> None:
    async with JournaledRuntime() as rt, rt.session("obs-stream"):
        async with contextlib.aclosing(rt.stream_step("early", secret_chunks, "x")) as it:
            async for _ in it:
                break
        abandoned = rt.stream_step("abandoned", secret_chunks, "y")
        await abandoned.__anext__()
    streams = {attrs(s)["jeevesagent.step"]: s for s in spans.named("jeevesagent.stream_step")}
    assert set(streams) == {"early", "abandoned"}
    assert all(attrs(s)["jeevesagent.closed_early"] is True for s in streams.values())
    [session] = spans.named("jeevesagent.session")
    assert streams["abandoned"].end_time <= session.end_time
    await abandoned.aclose()


async def test_a_session_that_fails_to_open_ends_its_span(
    store_factory: StoreFactory, spans: Capture
) -> None:
    from opentelemetry import trace

    before = trace.get_current_span()
    async with (
        JournaledRuntime(await store_factory.new()) as a,
        JournaledRuntime(await store_factory.new()) as b,
        a.session("obs-busy"),
    ):
        with pytest.raises(SessionBusyError):
            async with b.session("obs-busy"):
                pytest.fail("opened a busy session")
        assert trace.get_current_span() is not before  # a's session span is current here
    assert trace.get_current_span() is before
    sessions = spans.named("jeevesagent.session")
    assert len(sessions) == 2
    assert sorted(attrs(s)["jeevesagent.status"] for s in sessions) == ["completed", "failed"]


async def test_no_step_spans_when_the_session_is_not_sampled(otel: Capture) -> None:
    otel.exporter.clear()
    assert not otel.on
    async with JournaledRuntime() as rt:
        await agent(rt, "obs-unsampled")
        async with rt.session("obs-unsampled") as session:
            assert session._state.tracer is None
    assert otel.finished() == []


# -- without OpenTelemetry ------------------------------------------------------------------------

WITHOUT_OTEL = textwrap.dedent(
    """
    import importlib.abc
    import logging
    import sys

    MODE = sys.argv[1]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "opentelemetry":
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    if MODE == "blocked":
        sys.meta_path.insert(0, Block())
    else:  # installed and imported, but no tracer provider set
        from opentelemetry import trace

    import anyio

    from jeevesagent.runtime import InProcRuntime, JournaledRuntime

    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")

    async def gen():
        yield 1
        yield 2

    async def main():
        for rt in (JournaledRuntime(), InProcRuntime()):
            async with rt:
                for _ in range(2):
                    async with rt.session("s") as session:
                        assert await rt.step("a", lambda: 41) == 41
                        assert [c async for c in rt.stream_step("b", gen)] == [1, 2]
                        assert rt._current.get().tracer is None
        try:
            async with JournaledRuntime() as rt, rt.session("t"):
                raise KeyError("k")
        except KeyError:
            pass

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
    if MODE == "blocked":
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    else:
        assert trace.get_current_span() is trace.INVALID_SPAN
    print("OK")
    """
)


@pytest.mark.parametrize("mode", ["blocked", "unconfigured"])
def test_works_without_opentelemetry(mode: str) -> None:
    if mode == "unconfigured":
        pytest.importorskip("opentelemetry.trace")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, mode],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    assert "DEBUG session 's': step 'a' replayed" in proc.stderr
    assert "INFO session 's' closed (status=completed, steps executed=0, replayed=2)" in (
        proc.stderr
    )

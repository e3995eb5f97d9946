"""Per-step cost of the integration adapters next to our own SQLite store, in one run.

    PYTHONPATH=. python benchmarks/adapters.py [--steps N] [--rounds R] [--only sqlite,dbos]

Each adapter module ``benchmarks/adapter_<name>.py`` exposes ``async def per_step_us(n) -> float``:
µs per new, recorded step of one session of ``n`` steps, end to end through that runtime's public
API (the session open is not timed). ``sqlite`` is ``SqliteRuntime`` on a fresh file (WAL,
synchronous=FULL), measured the same way. Rounds interleave the runtimes (sqlite, temporal, dbos,
sqlite, ...), and the table gives the median and min-max of each and its ratio to SQLite's median.
asyncio only: temporalio and DBOS are asyncio-bound. A benchmark, not a test: nothing asserts
timing. It writes the table between the ``adapters`` markers of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio

from jeevesagent.runtime import SqliteRuntime

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- adapters:begin -->", "<!-- adapters:end -->"
ADAPTERS = ("sqlite", "temporal", "dbos")
LABELS = {
    "sqlite": "`SqliteRuntime` (our SQLite store, synchronous=FULL)",
    "temporal": "`TemporalRuntime` (a local Temporal dev server, in memory)",
    "dbos": "`DBOSRuntime` (DBOS 3.4, SQLite system database)",
}


def _step_fn(i: int) -> dict[str, object]:
    return {"i": i, "text": "hello"}


async def sqlite_per_step_us(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="jeevesagent-adapters-") as tmp:
        rt = SqliteRuntime(os.path.join(tmp, "journal.db"))
        async with rt, rt.session("bench"):
            start = time.perf_counter_ns()
            for i in range(n):
                await rt.step(f"s{i}", _step_fn, i)
            elapsed = time.perf_counter_ns() - start
    return elapsed / n / 1000


def _measure(name: str) -> Callable[[int], Awaitable[float]]:
    if name == "sqlite":
        return sqlite_per_step_us
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"adapter_{name}")
    measure: Callable[[int], Awaitable[float]] = module.per_step_us
    return measure


def render(samples: dict[str, list[float]], n: int, rounds: int, seconds: float) -> str:
    base = statistics.median(samples["sqlite"]) if "sqlite" in samples else None
    lines = [
        "## Integration adapters: per-step cost (issue 15)",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/adapters.py --steps {n} --rounds {rounds}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {seconds:.0f} s; "
        f"asyncio; {platform.platform()}, os.cpu_count() = {os.cpu_count()}, Python "
        f"{platform.python_version()}",
        "",
        f"µs per new recorded step, one session of {n} steps (session open not timed), median "
        f"(min-max) of {rounds} interleaved rounds; ratio to `SqliteRuntime`'s median.",
        "",
        "| runtime | µs/step: median (min-max) | ratio to SQLite |",
        "| --- | --- | --- |",
    ]
    for name, values in samples.items():
        med = statistics.median(values)
        ratio = f"{med / base:.2f}x" if base else "—"
        lines.append(
            f"| {LABELS[name]} | {med:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: pathlib.Path, text: str) -> None:
    block = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new, encoding="utf-8")


async def run(names: list[str], n: int, rounds: int) -> dict[str, list[float]]:
    measures = {name: _measure(name) for name in names}
    for measure in measures.values():  # one warm-up round, discarded
        await measure(max(5, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name, measure in measures.items():
            samples[name].append(await measure(n))
            print(f"round {r + 1}: {name} {samples[name][-1]:,.0f} µs/step", file=sys.stderr)
    return samples


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default=",".join(ADAPTERS))
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)
    names = [x for x in a.only.split(",") if x]
    unknown = set(names) - set(ADAPTERS)
    if unknown:
        p.error(f"unknown adapters {sorted(unknown)}; known: {', '.join(ADAPTERS)}")
    start = time.monotonic()
    samples = anyio.run(run, names, a.steps, a.rounds, backend="asyncio")
    text = render(samples, a.steps, a.rounds, time.monotonic() - start)
    print(text)
    if not a.no_write:
        write_section(RESULTS, text)


if __name__ == "__main__":
    main(sys.argv[1:])

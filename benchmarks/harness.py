"""Timing primitives and the result table: samples, targets, interleaved rounds, markdown."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Line", "Stat", "Target", "now_ns", "render_table", "run_rounds", "settle"]

now_ns = time.perf_counter_ns


def settle() -> None:
    """Collect garbage left by setup so it is not collected inside a timed section."""
    gc.collect()


async def run_rounds(
    rounds: int, warmup: int, one_round: Callable[[], Awaitable[dict[str, float]]]
) -> dict[str, list[float]]:
    """Call ``one_round`` ``warmup`` times (discarded), then ``rounds`` times.

    ``one_round`` measures a floor and its workload one after the other and returns every metric
    it measured, so floors and workloads alternate: floor, workload, floor, workload, ...
    """
    for _ in range(warmup):
        await one_round()
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, value in (await one_round()).items():
            samples.setdefault(name, []).append(value)
    return samples


def fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Stat:
    """The samples of one metric, one per round."""

    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        lo, hi = min(self.values), max(self.values)
        return f"{fmt(self.median)} {self.unit} ({fmt(lo)}-{fmt(hi)})"


@dataclass(frozen=True)
class Target:
    """A target from DESIGN.md §5, checked against the median result or the ratio of medians."""

    on: Literal["result", "ratio"]
    op: Literal["<=", ">="]
    limit: float
    text: str

    def met(self, result: float, ratio: float | None) -> bool:
        value = result if self.on == "result" else ratio
        if value is None:
            raise ValueError(f"target {self.text!r} needs a ratio")
        return value <= self.limit if self.op == "<=" else value >= self.limit


@dataclass(frozen=True)
class Line:
    """One row of a store's table. ``ratio`` is computed from medians by the caller, which also
    says what it is (workload / floor, or floor / workload for a speedup) in the target text."""

    workload: str
    result: Stat
    floor: Stat | None = None
    ratio: float | None = None
    target: Target | None = None

    def cells(self) -> list[str]:
        met = "—"
        if self.target is not None:
            met = "yes" if self.target.met(self.result.median, self.ratio) else "no"
        return [
            self.workload,
            str(self.result),
            "—" if self.floor is None else str(self.floor),
            "—" if self.ratio is None else f"{self.ratio:.2f}x",
            "—" if self.target is None else self.target.text,
            met,
        ]


HEADER = ["workload", "result: median (min-max)", "floor", "ratio", "target", "met?"]


def render_table(lines: list[Line]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(line.cells() for line in lines)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)

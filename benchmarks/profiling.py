"""``run.py --profile``: cProfile of the record and replay loops (event-loop thread only; the
SQLite store's own thread and the asyncpg bridge thread under trio are not profiled)."""

from __future__ import annotations

import cProfile
import io
import pstats

from stores import BenchStore
from workloads import Config, record_steps, replay_steps

__all__ = ["profile_store"]


def _top(profiler: cProfile.Profile, title: str, limit: int) -> str:
    out = io.StringIO()
    out.write(f"--- {title} ---\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


async def profile_store(store: BenchStore, cfg: Config, limit: int = 25) -> str:
    report = []
    async with store.journal() as journal:
        rt = await store.open_runtime(journal)
        try:
            profiler = cProfile.Profile()
            await record_steps(rt, "bench", cfg.steps, profiler)
            report.append(_top(profiler, f"{store.name}: record {cfg.steps} steps", limit))
        finally:
            await rt.aclose()
        rt = await store.open_runtime(journal)
        try:
            profiler = cProfile.Profile()
            await replay_steps(rt, "bench", cfg.steps, profiler)
            report.append(_top(profiler, f"{store.name}: replay {cfg.steps} steps", limit))
        finally:
            await rt.aclose()
    return "\n".join(report)

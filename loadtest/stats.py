"""Numbers from exact latencies: the summary, per-second series and per-step results (NumPy only).

Percentiles use Locust's own rule, the order statistic at rank floor(N * p) of all requests (failures
included), but on exact values. Locust's figure is then the same request's latency rounded, so the two agree
to Locust's rounding and differ only in precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kdeploy.loadtest.recorder import Records
from kdeploy.loadtest.shapes import ShapePlan
from kdeploy.loadtest.slo import Slo

PERCENTILES: tuple[float, ...] = (0.50, 0.90, 0.95, 0.99)
SETTLE_S = 1.0
"""Seconds left out at the start of each step, while the new users are starting."""


def percentile_name(p: float) -> str:
    """0.99 as `p99`, 0.999 as `p99.9`."""
    return f"p{100 * p:g}"


def order_statistic(sorted_values: np.ndarray, p: float) -> float:
    """Locust's percentile rule on sorted values: the element at rank `int(N * p)` (clamped to the last)."""
    n = sorted_values.size
    return float(sorted_values[min(int(n * p), n - 1)])


def latency_stats(latency_ms: np.ndarray, percentiles: Iterable[float] = PERCENTILES) -> dict[str, float | None]:
    """min, mean, the percentiles and max of a set of latencies (all `None` when empty)."""
    wanted = sorted(set(PERCENTILES) | set(percentiles))
    if latency_ms.size == 0:
        return {"min": None, "mean": None, **{percentile_name(p): None for p in wanted}, "max": None}
    ordered = np.sort(latency_ms)
    stats: dict[str, float | None] = {"min": float(ordered[0]), "mean": float(ordered.mean())}
    stats.update({percentile_name(p): order_statistic(ordered, p) for p in wanted})
    stats["max"] = float(ordered[-1])
    return stats


def summarize(records: Records, percentiles: Iterable[float] = PERCENTILES) -> dict[str, Any]:
    """Requests, failures by error, throughput and latency of a run.

    Throughput (`rps`) is requests over the time from the test's start to the last completion, as Locust's total
    RPS; `send_rate` is the pace of the sends themselves (the open-loop rate actually kept).
    """
    requests = len(records)
    failed = records.error >= 0
    counts = np.bincount(records.error[failed], minlength=len(records.errors)) if requests else np.zeros(0, int)
    by_error = {records.errors[i]: int(c) for i, c in sorted(enumerate(counts), key=lambda x: -x[1]) if c}
    elapsed = float(records.end.max() - records.test_start) if requests else 0.0
    window = float(records.start.max() - records.start.min()) if requests > 1 else 0.0
    return {
        "requests": requests,
        "failures": int(failed.sum()),
        "error_rate": float(failed.mean()) if requests else 0.0,
        "failures_by_error": by_error,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed > 0 else 0.0,
        # Between the first and the last send: the rate itself, without connecting and draining at either end.
        "send_rate": (requests - 1) / window if window > 0 else 0.0,
        "latency_ms": latency_stats(records.latency_ms, percentiles),
    }


def per_second(records: Records, width_s: float = 1.0) -> dict[str, np.ndarray]:
    """Completions per second and latency percentiles (p50, p90, p99) in windows of `width_s` by completion time."""
    if not len(records):
        return {"t": np.zeros(0), "rps": np.zeros(0), "p50": np.zeros(0), "p90": np.zeros(0), "p99": np.zeros(0)}
    offsets = records.end - records.test_start
    windows = np.floor(np.maximum(offsets, 0.0) / width_s).astype(int)
    count = int(windows.max()) + 1
    sizes = np.bincount(windows, minlength=count)
    series: dict[str, np.ndarray] = {"t": np.arange(count) * width_s, "rps": sizes / width_s}
    # Sorted by window, then latency: each window's order statistics are then plain index arithmetic.
    order = np.lexsort((records.latency_ms, windows))
    ordered = records.latency_ms[order]
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for p in (0.50, 0.90, 0.99):
        rank = np.minimum((sizes * p).astype(int), np.maximum(sizes - 1, 0))
        values = ordered[np.minimum(first + rank, ordered.size - 1)]
        series[percentile_name(p)] = np.where(sizes > 0, values, np.nan)
    return series


def _subset(records: Records, mask: np.ndarray, test_start: float) -> Records:
    return Records(start=records.start[mask], latency_ms=records.latency_ms[mask], error=records.error[mask],
                   errors=records.errors, test_start=test_start)


def stage_results(records: Records, plan: ShapePlan, slo: Slo | None,
                  percentiles: Iterable[float] = PERCENTILES) -> list[dict[str, Any]]:
    """One summary per stage of the plan, from the requests sent after the stage settled."""
    offsets = records.start - records.test_start
    results = []
    for stage in plan.stages:
        settle = min(SETTLE_S, 0.25 * (stage.end_s - stage.start_s))
        begin = stage.start_s + settle
        mask = (offsets >= begin) & (offsets < stage.end_s)
        summary = summarize(_subset(records, mask, records.test_start + begin), percentiles)
        # Throughput over the window itself: requests still in flight at its end belong to it.
        summary["rps"] = summary["requests"] / (stage.end_s - begin)
        summary.update(users=stage.users, start_s=begin, end_s=stage.end_s)
        if slo is not None:
            summary["slo_held"] = slo.evaluate(summary)["held"]
        results.append(summary)
    return results


def capacity(stages: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The step with the highest throughput at which the SLO held (`None` if it held at no step)."""
    held = [s for s in stages if s.get("slo_held") and s["requests"]]
    if not held:
        return None
    best = max(held, key=lambda s: s["rps"])
    return {"rps": best["rps"], "users": best["users"], "latency_ms": best["latency_ms"]}

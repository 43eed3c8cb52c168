"""Service-level objectives: `p99<50ms,errors<0.1%,rps>200`, parsed once and checked against a summary.

Terms are joined by commas; each is METRIC OP VALUE with OP one of `<`, `<=`, `>`, `>=`:
- latency `p50`, `p90`, `p95`, `p99`, `p99.9`, `mean`, `max` in `us`, `ms` (the default) or `s`;
- `errors`, the share of failed requests, in percent (`%` optional);
- `rps`, successful-or-not requests per second (`/s` optional).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdeploy.common.errors import UsageError

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_LATENCY = re.compile(r"^(p\d+(?:\.\d+)?|mean|max)$")
_TERM = re.compile(r"^\s*([a-z0-9.]+)\s*(<=|>=|<|>)\s*(\d+(?:\.\d+)?)\s*(us|ms|s|%|/s)?\s*$")
_TO_MS = {None: 1.0, "ms": 1.0, "us": 0.001, "s": 1000.0}


@dataclass(frozen=True)
class SloTerm:
    """One objective: `metric op threshold`, the threshold in the metric's unit (ms, percent or per second)."""

    text: str
    metric: str
    op: str
    threshold: float

    def actual(self, summary: Mapping[str, Any]) -> float | None:
        """The summary's value for this metric (`None` when there were no requests to measure)."""
        if self.metric == "errors":
            return 100.0 * summary["error_rate"] if summary["requests"] else None
        if self.metric == "rps":
            return float(summary["rps"])
        value = summary["latency_ms"].get(self.metric)
        return None if value is None else float(value)

    def holds(self, summary: Mapping[str, Any]) -> bool:
        actual = self.actual(summary)
        return actual is not None and _OPS[self.op](actual, self.threshold)


@dataclass(frozen=True)
class Slo:
    """All terms must hold."""

    text: str
    terms: tuple[SloTerm, ...]

    def evaluate(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The SLO against a summary: each term's actual value and verdict, and whether all held."""
        terms = [{"term": t.text, "metric": t.metric, "actual": t.actual(summary), "held": t.holds(summary)}
                 for t in self.terms]
        return {"spec": self.text, "held": all(t["held"] for t in terms), "terms": terms}


def slo_verdict(summary: Mapping[str, Any]) -> bool | None:
    """Whether the run met its SLO (`None` without one).

    A step run searches for the load at which the SLO breaks, so it passes when the SLO held at some step
    (a capacity was found), not over the whole run.
    """
    if summary["slo"] is None:
        return None
    if summary.get("steps") is not None:
        return summary.get("capacity") is not None
    return bool(summary["slo"]["held"])


def percentile_of(metric: str) -> float | None:
    """`p99.9` as 0.999; `None` for `mean` and `max`."""
    return float(metric[1:]) / 100.0 if metric.startswith("p") else None


def parse_term(text: str) -> SloTerm:
    """Parse one term.

    Raises:
        UsageError: naming the term and the accepted forms.
    """
    match = _TERM.match(text.lower())
    if not match:
        raise UsageError(f"SLO term {text!r} is not METRIC<VALUE (e.g. p99<50ms, errors<0.1%, rps>200)")
    metric, op, number, unit = match.groups()
    value = float(number)
    if _LATENCY.match(metric):
        if unit not in _TO_MS:
            raise UsageError(f"SLO term {text!r}: latency takes us, ms or s")
        p = percentile_of(metric)
        if p is not None and not 0 < p <= 1:
            raise UsageError(f"SLO term {text!r}: percentile must be between p0 and p100")
        return SloTerm(text.strip(), metric, op, value * _TO_MS[unit])
    if metric == "errors" and unit in (None, "%"):
        return SloTerm(text.strip(), metric, op, value)
    if metric == "rps" and unit in (None, "/s"):
        return SloTerm(text.strip(), metric, op, value)
    raise UsageError(f"SLO term {text!r}: unknown metric or unit; use p50..p99.9, mean, max (ms), errors (%), rps")


def parse_slo(text: str) -> Slo:
    """Parse `p99<50ms,errors<0.1%,rps>200`.

    Raises:
        UsageError: when empty or a term is malformed.
    """
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--slo is empty; e.g. --slo 'p99<50ms,errors<0.1%'")
    return Slo(text.strip(), tuple(parse_term(p) for p in parts))

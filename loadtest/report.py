"""What a load test leaves behind: `summary.json`, a short console table and `latency.png` (and, for
`kdeploy loadtest compare`, one table and one plot for all targets).

Plots use Matplotlib's Agg canvas directly (no pyplot, no global backend), so they work without a display.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.files import atomic_path, write_json_atomic, write_text_atomic
from kdeploy.loadtest.recorder import Records
from kdeploy.loadtest.slo import slo_verdict
from kdeploy.loadtest.stats import per_second

logger = logging.getLogger(__name__)

TABLE_PERCENTILES = ("p50", "p90", "p95", "p99", "max")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def table_rows(summaries: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Header and one row per summary: load, requests, failures, throughput, latency, SLO verdict."""
    header = ["target", "protocol", "model", "batch", "load", "requests", "failures", "rps",
              *(f"{p} ms" for p in TABLE_PERCENTILES), "SLO"]
    rows = [header]
    for s in summaries:
        run = s["run"]
        load = f"{run['rate']:g}/s" if run["rate"] else f"{run['users']} users"
        held = slo_verdict(s)
        slo = "-" if held is None else ("held" if held else "MISSED")
        if held and s.get("steps"):
            slo = f"held to {s['capacity']['users']} users"
        rows.append([run["label"], run["protocol"], run["model"], str(run["batch"]), load, str(s["requests"]),
                     f"{s['failures']} ({100 * s['error_rate']:.2f}%)", f"{s['rps']:.1f}",
                     *(_ms(s["latency_ms"][p]) for p in TABLE_PERCENTILES), slo])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def details(summary: Mapping[str, Any]) -> list[str]:
    """Lines under the table: errors, SLO terms, capacity and the files written."""
    lines = [f"  {count} x {error}" for error, count in list(summary["failures_by_error"].items())[:5]]
    if summary["slo"] is not None:
        scope = " (whole run)" if summary.get("steps") is not None else ""
        for term in summary["slo"]["terms"]:
            actual = "n/a" if term["actual"] is None else f"{term['actual']:.4g}"
            lines.append(f"  SLO {term['term']}{scope}: actual {actual} -> {'held' if term['held'] else 'MISSED'}")
    if summary.get("steps") is not None:
        lines += [_step_line(step) for step in summary["steps"]]
        capacity = summary.get("capacity")
        if capacity:
            lines.append(f"  capacity: {capacity['rps']:.1f} req/s at {capacity['users']} users with the SLO held")
        else:
            lines.append("  capacity: " + ("the SLO held at no step" if summary["slo"] else "give --slo to find it"))
    if summary["run"]["rate"] and summary["send_rate"] < 0.95 * summary["run"]["rate"]:
        lines.append(f"  note: {summary['send_rate']:.1f} req/s sent of {summary['run']['rate']:g}/s asked; "
                     "latencies include the wait for a free user (add --users, or the server is saturated)")
    return lines


def _step_line(step: Mapping[str, Any]) -> str:
    verdict = "" if "slo_held" not in step else f", SLO {'held' if step['slo_held'] else 'MISSED'}"
    return (f"  step {step['users']} users: {step['rps']:.1f} req/s, p50 {_ms(step['latency_ms']['p50'])} ms, "
            f"p99 {_ms(step['latency_ms']['p99'])} ms{verdict}")


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / "summary.json"
    write_json_atomic(path, summary)
    return path


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def plot_latency(path: Path, records: Records, summary: Mapping[str, Any]) -> None:
    """`latency.png`: percentiles and throughput per second (top), and the latency histogram (bottom)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 2])
    series = per_second(records)
    for name, color in (("p50", "tab:blue"), ("p90", "tab:orange"), ("p99", "tab:red")):
        top.plot(series["t"] + 0.5, series[name], marker=".", color=color, label=f"{name} (exact)")
    top.set_xlabel("seconds since start (by completion)")
    top.set_ylabel("latency per second window (ms)")
    if len(records) and np.nanmax(series["p99"]) > 20 * max(np.nanmin(series["p50"]), 1e-3):
        top.set_yscale("log")
    rate = top.twinx()
    rate.bar(series["t"] + 0.5, series["rps"], width=0.9, color="0.85", zorder=0, label="requests/s")
    rate.set_ylabel("requests / s")
    top.set_zorder(rate.get_zorder() + 1)
    top.patch.set_visible(False)
    for step in summary.get("steps") or []:
        top.axvline(step["start_s"], color="0.6", linestyle=":", linewidth=1)
    handles = top.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="upper left", fontsize="small")
    run = summary["run"]
    top.set_title(f"{run['label']}  {run['protocol']}  model {run['model']}  batch {run['batch']}  "
                  f"{summary['requests']} requests, {summary['rps']:.1f} req/s")
    _histogram(bottom, records, summary)
    _save(fig, Path(path))


def _histogram(ax: Any, records: Records, summary: Mapping[str, Any]) -> None:
    latency = records.latency_ms
    if latency.size == 0:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
        return
    low, high = max(float(latency.min()), 1e-3), max(float(latency.max()), 2e-3)
    log = high / low > 20
    bins = np.geomspace(low, high * 1.001, 60) if log else np.linspace(low, high * 1.001, 60)
    ok = records.error < 0
    ax.hist([latency[ok], latency[~ok]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
            label=["succeeded", "failed"])
    if log:
        ax.set_xscale("log")
    for name, style in (("p50", "--"), ("p99", "-.")):
        value = summary["latency_ms"][name]
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{name} {_ms(value)} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize="small")


def plot_comparison(path: Path, summaries: Sequence[Mapping[str, Any]]) -> None:
    """`comparison.png`: latency percentiles (left) and throughput (right), one group per target."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 2.5 * len(summaries) + 4), 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[2, 1])
    labels = [s["run"]["label"] for s in summaries]
    x = np.arange(len(summaries))
    width = 0.8 / 3
    for k, name in enumerate(("p50", "p90", "p99")):
        values = [s["latency_ms"][name] or 0.0 for s in summaries]
        left.bar(x + (k - 1) * width, values, width, label=name)
    left.set_xticks(x, labels, rotation=10, fontsize="small")
    left.set_ylabel("latency (ms, exact)")
    left.legend(fontsize="small")
    right.bar(x, [s["rps"] for s in summaries], 0.6, color="0.5")
    right.set_xticks(x, labels, rotation=10, fontsize="small")
    right.set_ylabel("requests / s")
    fig.suptitle("kdeploy loadtest compare: same load on each target")
    _save(fig, Path(path))


def write_comparison(out_dir: Path, summaries: Sequence[Mapping[str, Any]]) -> str:
    """`comparison.json`, `comparison.md` and `comparison.png` in `out_dir`; returns the console table."""
    rows = table_rows(summaries)
    write_json_atomic(Path(out_dir) / "comparison.json", {"runs": list(summaries)})
    write_text_atomic(Path(out_dir) / "comparison.md", markdown_table(rows))
    plot_comparison(Path(out_dir) / "comparison.png", summaries)
    return format_table(rows)

"""Parity reports for people: a Markdown table, a console table and a plot of the error distributions."""

from __future__ import annotations

from pathlib import Path

from kdeploy.common.files import atomic_path, write_json_atomic, write_text_atomic
from kdeploy.export.parity import ParityReport

REPORT_JSON = "parity.json"
REPORT_MD = "parity.md"
REPORT_PNG = "parity.png"

_COLUMNS = ("format", "output", "max abs err", "max rel err", "mean abs err", "labels same", "acc Δ (pts)",
            "tolerance", "result")


def _fmt(value: float | None, spec: str = ".2e") -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: ParityReport) -> list[tuple[str, ...]]:
    """One row per format and output (one row for a format that could not run)."""
    rows: list[tuple[str, ...]] = []
    for fmt in report.formats:
        tol = fmt.tolerance
        tol_text = f"{fmt.precision}: " + (f"atol {tol.atol:g} rtol {tol.rtol:g}" if tol.atol is not None
                                           else f"labels ≥ {tol.min_label_agreement:.0%}")
        if not fmt.outputs:
            result = "FAIL: " + "; ".join(fmt.problems) if fmt.problems else f"pass: {fmt.note}"
            rows.append((fmt.format, "-", "-", "-", "-", "-", "-", tol_text, result))
            continue
        for out in fmt.outputs:
            ok = out.passed and not fmt.problems
            rows.append((
                fmt.format, out.output, _fmt(out.max_abs), _fmt(out.max_rel), _fmt(out.mean_abs),
                _fmt(out.label_agreement, ".2%"), _fmt(out.accuracy_drop, "+.2f"), tol_text,
                "pass" if ok else "FAIL",
            ))
    return rows


def to_markdown(report: ParityReport) -> str:
    """The report as a Markdown document: a summary line, the table, and every failure spelled out."""
    lines = [
        f"# Parity: {report.model} version {report.version}",
        "",
        f"Reference: {report.reference}. {report.samples} samples from {report.data_source}, "
        f"batch sizes {sorted(set(report.batch_sizes))}, {report.seconds:.1f} s. "
        f"Result: **{'PASS' if report.passed else 'FAIL'}**.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    if report.failures:
        lines += ["", "## Failures", ""] + [f"- {failure}" for failure in report.failures]
    return "\n".join(lines) + "\n"


def to_console(report: ParityReport) -> str:
    """The table aligned for a terminal."""
    rows = [_COLUMNS, *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def plot_errors(report: ParityReport, path: Path) -> None:
    """A histogram of absolute errors per format (log scale), one panel per format, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    formats = [f for f in report.formats if f.outputs]
    fig, axes = plt.subplots(len(formats) or 1, 1, figsize=(8, 2.6 * max(1, len(formats))), squeeze=False)
    for ax, fmt in zip(axes[:, 0], formats):
        for out in fmt.outputs:
            errors = out.abs_errors if out.abs_errors is not None else np.array([])
            errors = errors[np.isfinite(errors)]
            if errors.size == 0:
                continue
            floor = 1e-12
            bins = np.logspace(-12, max(0.0, np.log10(max(errors.max(), floor)) + 0.5), 60)
            ax.hist(np.maximum(errors, floor), bins=bins, alpha=0.6, label=out.output)
        if fmt.tolerance.atol is not None:
            ax.axvline(fmt.tolerance.atol, color="red", linestyle="--", label=f"atol {fmt.tolerance.atol:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("values")
        status = "pass" if fmt.passed else "FAIL"
        ax.set_title(f"{fmt.format} ({fmt.precision}) vs {report.reference}: {status}", fontsize=10)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("absolute error (errors below 1e-12 shown at 1e-12)")
    fig.suptitle(f"Parity errors: {report.model} v{report.version}, {report.samples} samples")
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_reports(report: ParityReport, out_dir: Path) -> dict[str, Path]:
    """Write parity.json, parity.md and parity.png into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_JSON, "markdown": out_dir / REPORT_MD, "plot": out_dir / REPORT_PNG}
    write_json_atomic(paths["json"], report.to_json())
    write_text_atomic(paths["markdown"], to_markdown(report))
    plot_errors(report, paths["plot"])
    return paths

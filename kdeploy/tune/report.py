"""`kdeploy tune`'s report: a Markdown table and a plot of every candidate, and the chosen batching for TF Serving and
Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from kdeploy.common.files import write_text_atomic
from kdeploy.serve.model_settings import ModelSettings


def markdown(document: dict[str, Any]) -> str:
    """The report: what was measured, every candidate's levels and score, and the choice."""
    unit = "inf/s" if document["objective"] == "throughput" else "c1 p50 ms"
    lines = [f"# kdeploy tune: {document['model']}", "",
             f"Objective {document['objective']}" + (f" under SLO `{document['slo']}`" if document["slo"] else "")
             + f"; {document['load_generator']}, concurrency {', '.join(map(str, document['concurrency']))}, "
             f"{document['level_seconds']:g} s per level; {document['seconds']:.0f} s of a "
             f"{document['budget_s']:.0f} s budget; {document['machine']}; {document['date']}.", ""]
    levels = document["concurrency"]
    lines.append("| candidate | settings | rounds | " + " | ".join(f"c{c} inf/s (p99 ms)" for c in levels)
                 + f" | score ({unit}) |")
    lines.append("|---|---|---|" + "---|" * len(levels) + "---|")
    for entry in document["candidates"]:
        by_level = {r["concurrency"]: r for r in entry["levels"]}
        cells = []
        for level in levels:
            r = by_level.get(level)
            if r is None or r["error"]:
                cells.append("error" if r else "-")
                continue
            p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
            cells.append(f"{r['infer_per_s']:.0f} ({p99})" + ("" if r["held"] else " ✗"))
        value = entry["score"]
        shown = "-" if value is None else (f"{value:.0f}" if document["objective"] == "throughput"
                                           else f"{-value:.2f}")
        name = f"**{entry['label']}**" if entry["label"] == document["best"] else entry["label"]
        lines.append(f"| {name} | {entry['describe']} | {entry['rounds']} | " + " | ".join(cells) + f" | {shown} |")
    lines.append("")
    lines.append("✗: the SLO did not hold (or requests failed) at that level. Each cell is the median of the "
                 "candidate's rounds.")
    if document["best"]:
        gain = document["gain_over_defaults"]
        lines += ["", f"Best: **{document['best']}**" + (f", {gain:.2f} x the defaults" if gain else "") + "."]
    else:
        lines += ["", "No candidate held the SLO at any level: nothing was written."]
    if document["skipped"]:
        lines.append(f"Not measured within the budget: {', '.join(document['skipped'])}.")
    return "\n".join(lines) + "\n"


def plot(document: dict[str, Any], path: Path) -> Path:
    """Throughput against p99 latency for each candidate over the concurrency levels; the SLO as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20")
    for index, entry in enumerate(document["candidates"]):
        points = [(r["p99_ms"], r["infer_per_s"]) for r in entry["levels"] if not r["error"] and r["p99_ms"]]
        if not points:
            continue
        best = entry["label"] == document["best"]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=2.5 if best else 1.0,
                  color=colors(index % 20),
                  label=entry["label"] + (" (best)" if best else ""), zorder=3 if best else 2)
    slo = document.get("slo") or ""
    for text in slo.split(","):
        term = text.strip().lower()
        if term.startswith("p99<") and term.endswith("ms"):
            axis.axvline(float(term[4:-2].strip("=")), color="red", linestyle="--", label=f"SLO {term}")
    axis.set_xscale("log")
    axis.set_xlabel("p99 latency (ms, log scale)")
    axis.set_ylabel("inferences / s")
    axis.set_title(f"kdeploy tune: {document['model']} ({document['load_generator']}; points: concurrency "
                   f"{', '.join(map(str, document['concurrency']))})")
    axis.grid(True, which="both", alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def batching_files(settings: ModelSettings, model_dir: Path, out: Path) -> list[Path]:
    """The chosen batching as TF Serving's batching_parameters.txt and a Triton config.pbtxt's dynamic_batching
    (for an exported model), in `out`; nothing when the choice does not batch."""
    from kdeploy.serve.config import BatchingParameters
    from kdeploy.serve.configs import ConfigsConfig, batching_parameters
    from kdeploy.serve.model_settings import merge_batching
    from kdeploy.wire.protos.messages import load_protos

    if not settings.batching_enabled:
        return []
    params = merge_batching(BatchingParameters(), settings.batching, "kdeploy tune")
    protos = load_protos()
    configs = ConfigsConfig(repository=model_dir.parent, out_dir=out, max_batch_size=params.max_batch_size,
                            batch_timeout_micros=params.batch_timeout_micros,
                            max_enqueued_batches=params.max_enqueued_batches,
                            num_batch_threads=params.num_batch_threads,
                            allowed_batch_sizes=params.allowed_batch_sizes)
    written = [out / "batching_parameters.txt"]
    write_text_atomic(written[0], batching_parameters(protos, configs))
    manifest = _latest_manifest(model_dir)
    if manifest is not None:
        from kdeploy.serve.triton_config import triton_model_config

        message = triton_model_config(protos, manifest, max_batch_size=params.max_batch_size,
                                      max_queue_delay_microseconds=params.batch_timeout_micros)
        message.dynamic_batching.preferred_batch_size.extend(params.allowed_batch_sizes[1:])
        written.append(out / "config.pbtxt")
        write_text_atomic(written[1], text_format.MessageToString(message))
    return written


def _latest_manifest(model_dir: Path) -> Any:
    from kdeploy.contract.manifest import MANIFEST_FILE, read_manifest
    from kdeploy.contract.repository import version_numbers

    versions = version_numbers(model_dir)
    if not versions or not (model_dir / str(versions[-1]) / MANIFEST_FILE).exists():
        return None
    return read_manifest(model_dir / str(versions[-1]))

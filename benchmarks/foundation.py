"""Benchmark of the foundation stages: training time and accuracy per recipe, export time and artifact size per
format, and verify time. Writes the record benchmarks/results/foundation.json, from which `make docs` writes the
table in docs/benchmarks.md (`render`), and prints the table.

Run: `make bench` (or `.venv/bin/python benchmarks/foundation.py`). Numbers depend on the machine: the table
names it. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "foundation.json"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


def main(out: Path = Path("build/bench")) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from datetime import date

    from kdeploy.common.files import write_json_atomic
    from kdeploy.export.exporter import ExportConfig, export_model
    from kdeploy.train.trainer import TrainConfig, train

    rows = []
    for recipe, name in (("digits-cnn", "digits"), ("tabular-mlp", "tabular")):
        trained = train(TrainConfig(recipe=recipe, out_dir=out / name), write=lambda _: None)
        result = export_model(ExportConfig(model_path=trained.model_path, repository=out / "models", name=name,
                                           version=1, force=True), progress=lambda _: None)
        rows.append({
            "recipe": recipe,
            "train_seconds": trained.metrics["train_seconds"],
            "epochs": trained.metrics["epochs"],
            "val_accuracy": trained.metrics["validation"]["accuracy"],
            "export_seconds": {k: round(v, 2) for k, v in result.seconds.items() if k != "verify"},
            "verify_seconds": round(result.seconds.get("verify", 0.0), 2),
            "bytes": {"keras": result.manifest.source.bytes,
                      **{f: a.bytes for f, a in result.manifest.artifacts.items()}},
            "parity_passed": bool(result.parity),
        })
    results = {"machine": machine(), "date": date.today().isoformat(), "rows": rows}
    write_json_atomic(out / "foundation.json", results)
    write_json_atomic(RESULTS, results)
    print(render(results))
    return 0


def render(results: dict) -> str:
    """The Markdown table of one run (docs/benchmarks.md is written from this)."""
    lines = [f"Machine: {results['machine']}; {results['date']}.", "",
             "| recipe | epochs | train s | val acc | export s (SavedModel / TFLite / ONNX) | "
             "size KiB (keras / SavedModel / TFLite / ONNX) | verify s | parity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        e, b = r["export_seconds"], r["bytes"]
        lines.append(f"| {r['recipe']} | {r['epochs']} | {r['train_seconds']:.1f} | {r['val_accuracy']:.2%} | "
                     f"{e['savedmodel']:.1f} / {e['tflite']:.1f} / {e['onnx']:.1f} | "
                     f"{b['keras'] / 1024:.0f} / {b['savedmodel'] / 1024:.0f} / {b['tflite'] / 1024:.0f} / "
                     f"{b['onnx'] / 1024:.0f} | {r['verify_seconds']:.1f} | "
                     f"{'pass' if r['parity_passed'] else 'FAIL'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

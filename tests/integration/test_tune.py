"""`kdeploy tune` for real: candidate servers loaded by Locust; the kdeploy.toml it writes is what `kdeploy serve`
then uses."""

from __future__ import annotations

import json
import subprocess
import sys

from kdeploy.serve.model_settings import RuntimeSettings, read_settings_file
from tests.bare_models import write_linear_onnx
from tests.conftest import start_server


def test_tune_writes_the_best_settings_and_serve_uses_them(tmp_path):
    model_dir = tmp_path / "repo" / "linear"
    (model_dir / "1").mkdir(parents=True)
    write_linear_onnx(model_dir / "1" / "model.onnx")
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "kdeploy", "tune", str(model_dir), "--load-generator", "locust", "--slo", "p99<2s",
         "--candidates", "sleep-thread,spin-inline", "--concurrency", "1,4", "--level-seconds", "2",
         "--budget", "45s", "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[" in proc.stdout and "defaults" in proc.stdout  # progress lines, the baseline measured first
    document = json.loads((out / "tune.json").read_text())
    labels = [c["label"] for c in document["candidates"]]
    # The defaults first; what else fits the budget depends on the machine's speed (the rest are listed as skipped).
    assert labels[0] == "defaults" and set(labels) | set(document["skipped"]) == {"defaults", "sleep-thread",
                                                                                   "spin-inline"}
    assert all(c["score"] for c in document["candidates"]), document
    assert (out / "tune.png").is_file() and "| candidate |" in (out / "tune.md").read_text()
    best = next(c for c in document["candidates"] if c["label"] == document["best"])
    written = read_settings_file(model_dir / "kdeploy.toml")
    assert written.to_toml() in best["settings"] or best["settings"] in (model_dir / "kdeploy.toml").read_text()
    expected = written.apply(RuntimeSettings())

    server = start_server("--repository", tmp_path / "repo", "--no-rest", "--log-format", "text")
    try:
        assert "SERVING" in server.banner
    finally:
        assert server.stop() == 0
    line = next(x for x in server.log().splitlines() if "model linear version 1 loaded" in x)
    if expected.spin_wait != "auto":
        assert f"spin_wait={expected.spin_wait} " in line
    if expected.execution != "auto":
        assert f"execution={expected.execution} " in line

"""Load generators for `kdeploy tune`: closed-loop runs at a few concurrency levels, each one short.

- `perf_analyzer` (Triton's, C++; `make perf-analyzer` installs it in build/perf-venv): KServe v2 gRPC, little CPU
  of its own, so the server under test keeps the cores. Used when it is found.
- Locust (`kdeploy loadtest`'s runner): always installed; its Python users take a core of their own, so on a small
  machine it measures the server with one core less.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kdeploy.common.errors import UsageError

PERF_ANALYZER_VENV = Path("build") / "perf-venv"
"""Where `make perf-analyzer` installs it (relative to the working folder)."""


@dataclass(frozen=True)
class LevelResult:
    """One closed-loop run at one concurrency."""

    concurrency: int
    infer_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    error_rate: float
    latency_ms: dict[str, float | None]
    error: str | None = None
    """Why the run failed (the load generator's last line), or None."""

    def summary(self) -> dict[str, Any]:
        """The shape `kdeploy loadtest`'s SLO terms read."""
        return {"requests": self.requests, "error_rate": self.error_rate, "rps": self.infer_per_s,
                "latency_ms": self.latency_ms}


class LoadGenerator(Protocol):
    name: str

    def run(self, address: str, model: str, concurrency: int, seconds: float) -> LevelResult:
        """Load `model` at `address` with `concurrency` requests in flight for about `seconds`."""
        ...


def find_perf_analyzer(explicit: Path | None = None) -> Path | None:
    """perf_analyzer: the path given, build/perf-venv's, or one on PATH (None when there is none)."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    local = PERF_ANALYZER_VENV / "bin" / "perf_analyzer"
    if local.is_file():
        return local.resolve()
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


class PerfAnalyzer:
    """Triton's perf_analyzer over KServe v2 gRPC."""

    name = "perf_analyzer"

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def _env(self) -> dict[str, str]:
        # The binary links libcudart even with no GPU; its venv ships it (nvidia-cuda-runtime-cu12).
        venv = self.binary.parent.parent
        libs = [str(p) for p in venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib")]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])}

    def run(self, address: str, model: str, concurrency: int, seconds: float) -> LevelResult:
        # Three windows with perf_analyzer's own stability check off (-s 1000): on a busy machine it never settles
        # and then reports nothing; tune's repeated rounds stand in for it.
        window_ms = max(500, int(seconds * 1000 / 3))
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "pa.csv"
            command = [str(self.binary), "-m", model, "-u", address, "-i", "grpc", "-x", "1",
                       "--concurrency-range", f"{concurrency}:{concurrency}", "-p", str(window_ms), "-r", "3",
                       "-s", "1000", "-f", str(out)]
            proc = subprocess.run(command, capture_output=True, text=True, env=self._env(), check=False,
                                  timeout=60 + 10 * seconds)
            rows = list(csv.DictReader(out.open())) if out.exists() else []
        if proc.returncode != 0 or not rows:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
            return _failed(concurrency, tail[0])
        return level_from_csv_row(rows[0], concurrency, seconds)


def level_from_csv_row(row: dict[str, str], concurrency: int, seconds: float) -> LevelResult:
    """A perf_analyzer `-f` CSV row (latencies in µs) as a level's result."""
    latency: dict[str, float | None] = {name: float(row[f"{name} latency"]) / 1000.0
                                        for name in ("p50", "p90", "p95", "p99")}
    rate = float(row["Inferences/Second"])
    return LevelResult(concurrency, rate, latency["p50"], latency["p99"], int(rate * seconds), 0.0, latency)


def _failed(concurrency: int, detail: str) -> LevelResult:
    return LevelResult(concurrency, 0.0, None, None, 0, 1.0, {"p50": None, "p99": None}, error=detail)


class Locust:
    """`kdeploy loadtest`'s runner (Locust, KServe v2 gRPC, constant users)."""

    name = "locust"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def run(self, address: str, model: str, concurrency: int, seconds: float) -> LevelResult:
        from kdeploy.loadtest.config import LoadTestConfig, WorkloadSettings, parse_target
        from kdeploy.loadtest.runner import LoadTestError, run_loadtest

        config = LoadTestConfig(
            target=parse_target(address), users=concurrency, duration_s=max(2.0, seconds),
            workload=WorkloadSettings(model=model, protocol="kserve-grpc", signature_from_server=True),
            out_dir=self.out_dir / f"locust-c{concurrency}")
        try:
            summary = run_loadtest(config, echo=lambda _: None).summary
        except (LoadTestError, UsageError) as exc:
            return _failed(concurrency, str(exc).splitlines()[0])
        latency = summary["latency_ms"]
        return LevelResult(concurrency, float(summary["rps"]), latency.get("p50"), latency.get("p99"),
                           int(summary["requests"]), float(summary["error_rate"]), dict(latency))

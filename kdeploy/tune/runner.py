"""`kdeploy tune REPO/NAME`: serve the model with each candidate's settings, load it, keep the best, write it.

Each candidate gets its own `kdeploy serve` process (the settings in a kdeploy server config, so the model folder is
untouched while measuring), loaded at each concurrency level by perf_analyzer or Locust. The score is the best
throughput at a level where the SLO held (objective `throughput`), or the c1 p50 latency (objective `latency`).
When the budget leaves time, the leaders and the defaults are measured again, alternately, and each keeps the median
of its rounds: on a machine whose speed drifts, one round can crown the luckiest candidate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.common.files import write_text_atomic
from kdeploy.loadtest.slo import Slo, parse_slo
from kdeploy.serve.auto_settings import usable_cores
from kdeploy.serve.model_settings import SETTINGS_FILE
from kdeploy.tune.candidates import Candidate, candidate_grid
from kdeploy.tune.measure import LevelResult, LoadGenerator

logger = logging.getLogger(__name__)

OBJECTIVES = ("throughput", "latency")
SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TuneConfig:
    """One `kdeploy tune` run."""

    model_dir: Path
    """REPO/NAME: the model folder whose kdeploy.toml is written."""
    out_dir: Path
    slo: str | None = None
    """`p99<20ms`: a level counts only where it holds (errors must be 0 % in any case)."""
    objective: str = "throughput"
    budget_s: float = 300.0
    concurrency: tuple[int, ...] = (1, 4, 16, 32)
    level_seconds: float = 3.0
    write: bool = True
    """Write the best settings into REPO/NAME/kdeploy.toml (else only the report)."""
    candidates: tuple[str, ...] = ()
    """Labels of the candidates to try (default: all of them)."""

    def check(self) -> None:
        if not self.model_dir.is_dir():
            raise UsageError(f"{self.model_dir} is not a model folder (REPO/NAME)")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective {self.objective!r}: choose from {', '.join(OBJECTIVES)}")
        if self.budget_s < 5:
            raise UsageError("--budget must be at least 5s")
        if not self.concurrency or min(self.concurrency) < 1:
            raise UsageError("--concurrency needs levels of at least 1, e.g. 1,8,32")
        if self.objective == "latency" and 1 not in self.concurrency:
            raise UsageError("--objective latency measures c1: include 1 in --concurrency")
        if self.slo:
            parse_slo(self.slo)

    @property
    def model(self) -> str:
        return self.model_dir.name


@dataclass
class Measured:
    """A candidate and what its rounds measured."""

    candidate: Candidate
    rounds: list[list[LevelResult]] = field(default_factory=list)
    error: str | None = None

    def levels(self) -> list[LevelResult]:
        """Per concurrency, the median round's result (by throughput)."""
        by_level: dict[int, list[LevelResult]] = {}
        for round_ in self.rounds:
            for result in round_:
                by_level.setdefault(result.concurrency, []).append(result)
        return [sorted(results, key=lambda r: r.infer_per_s)[(len(results) - 1) // 2]
                for _, results in sorted(by_level.items())]


def level_holds(result: LevelResult, slo: Slo | None) -> bool:
    """No errors, and the SLO (if any) held."""
    if result.error is not None or result.requests == 0 or result.error_rate > 0:
        return False
    return slo is None or bool(slo.evaluate(result.summary())["held"])


def score(levels: list[LevelResult], objective: str, slo: Slo | None) -> float | None:
    """Higher is better: inferences/s at the best level holding the SLO, or minus the c1 p50 in ms."""
    if objective == "latency":
        c1 = next((r for r in levels if r.concurrency == 1 and level_holds(r, None)), None)
        return None if c1 is None or c1.p50_ms is None else -c1.p50_ms
    held = [r.infer_per_s for r in levels if level_holds(r, slo)]
    return max(held) if held else None


def settings_document(candidate: Candidate, model: str, model_dir: Path) -> str:
    """A kdeploy server config serving only this model with the candidate's settings."""
    body = candidate.settings.to_toml().replace("[runtime]", "[model.runtime]")
    body = body.replace("[batching]", "[model.batching]")
    return f'[[model]]\nname = "{model}"\nbase_path = "{model_dir.resolve()}"\n' + body


class CandidateServer:
    """`kdeploy serve` with one candidate's settings on a free port; a context manager that stops it."""

    def __init__(self, candidate: Candidate, config: TuneConfig, scratch: Path) -> None:
        self.candidate = candidate
        settings = scratch / f"{candidate.label}.toml"
        settings.write_text(settings_document(candidate, config.model, config.model_dir))
        self.log_path = scratch / f"{candidate.label}.log"
        self.command = [sys.executable, "-m", "kdeploy", "serve", "--model-config-file", str(settings),
                        "--host", "127.0.0.1", "--grpc-port", "0", "--no-rest", "--no-metrics", "--poll-seconds", "0",
                        "--drain-grace-seconds", "0", "--drain-seconds", "5", "--log-format", "text",
                        "--workers", str(candidate.workers)]
        self.address = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> CandidateServer:
        log = self.log_path.open("w")
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        assert self._process.stdout is not None
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                break
            if line.startswith("kdeploy serve:"):
                if "SERVING" not in line.split()[2:3]:
                    break
                self.address = line.split("grpc=", 1)[1].split()[0]
                return self
        self.__exit__()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
        raise RuntimeError(f"the server did not start: {tail[0]}")

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


@dataclass
class TuneResult:
    measured: list[Measured]
    best: Measured | None
    defaults: Measured | None
    skipped: list[str]
    document: dict[str, Any]
    written: list[Path]


def run_tune(config: TuneConfig, load: LoadGenerator, echo: Callable[[str], None] = print) -> TuneResult:
    """Measure every candidate that fits the budget, pick the best and write it.

    Raises:
        UsageError: for a bad configuration.
    """
    config.check()
    slo = parse_slo(config.slo) if config.slo else None
    cores = usable_cores()
    grid = candidate_grid(cores, batching=_batchable(config.model_dir))
    if config.candidates:
        unknown = sorted(set(config.candidates) - {c.label for c in grid})
        if unknown:
            raise UsageError(f"--candidates: unknown {unknown[0]!r}; choose from {', '.join(c.label for c in grid)}")
        grid = [c for c in grid if c.label in config.candidates or c.label == "defaults"]
    started = time.monotonic()
    durations: list[float] = []

    def per_candidate() -> float:
        """Time one candidate takes: a guess until one was measured, then the slowest so far."""
        return max([2.0 + len(config.concurrency) * (config.level_seconds + 1.5), *durations])

    measured: list[Measured] = []
    skipped: list[str] = []
    config.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdeploy-tune-") as scratch:

        def measure(entry: Measured, note: str) -> None:
            began = time.monotonic()
            elapsed = began - started
            echo(f"[{elapsed:5.0f}s/{config.budget_s:.0f}s] {note} {entry.candidate.label}: "
                 f"{entry.candidate.describe()}")
            try:
                with CandidateServer(entry.candidate, config, Path(scratch)) as server:
                    results = [load.run(server.address, config.model, level, config.level_seconds)
                               for level in config.concurrency]
            except RuntimeError as exc:
                entry.error = str(exc)
                echo(f"    failed: {exc}")
                return
            entry.rounds.append(results)
            durations.append(time.monotonic() - began)
            echo("    " + "  ".join(_cell(r, slo) for r in results))

        for index, candidate in enumerate(grid):
            if time.monotonic() - started + per_candidate() > config.budget_s and measured:
                skipped = [c.label for c in grid[index:]]
                echo(f"budget reached: {len(skipped)} candidates not measured ({', '.join(skipped)})")
                break
            entry = Measured(candidate)
            measured.append(entry)
            measure(entry, f"{index + 1}/{len(grid)}")
        # Confirmation rounds while the budget allows: the two leaders and the defaults, alternately.
        for round_number in range(2, 4):
            leaders = _ranked(measured, config.objective, slo)[:2]
            contenders = [*leaders, *([measured[0]] if measured[0] not in leaders else [])]
            if len(contenders) < 2 or time.monotonic() - started + per_candidate() * len(contenders) > config.budget_s:
                break
            for entry in contenders if round_number % 2 else contenders[::-1]:
                measure(entry, f"round {round_number}")
    ranked = _ranked(measured, config.objective, slo)
    best = ranked[0] if ranked else None
    defaults = measured[0] if measured else None
    document = _document(config, slo, measured, best, defaults, skipped, cores, load.name,
                         time.monotonic() - started)
    written = _write(config, best, document)
    return TuneResult(measured, best, defaults, skipped, document, written)


def _batchable(model_dir: Path) -> bool:
    """Whether the model's inputs have a dynamic first (batch) dimension (unknown: assume they do)."""
    from kdeploy.contract.manifest import MANIFEST_FILE, read_manifest
    from kdeploy.contract.repository import version_numbers

    versions = version_numbers(model_dir)
    if not versions or not (model_dir / str(versions[-1]) / MANIFEST_FILE).exists():
        return True
    signature = read_manifest(model_dir / str(versions[-1])).signature
    return all(spec.shape and spec.shape[0] is None for spec in (*signature.inputs, *signature.outputs))


def _cell(result: LevelResult, slo: Slo | None) -> str:
    if result.error is not None:
        return f"c{result.concurrency}: error ({result.error})"
    mark = "" if level_holds(result, slo) else " ✗"
    p99 = "-" if result.p99_ms is None else f"{result.p99_ms:.1f}"
    return f"c{result.concurrency}: {result.infer_per_s:.0f}/s p99 {p99} ms{mark}"


def _ranked(measured: list[Measured], objective: str, slo: Slo | None) -> list[Measured]:
    """The candidates with a score, best first (ties: the one measured first, the defaults before all)."""
    scored = []
    for index, entry in enumerate(measured):
        value = score(entry.levels(), objective, slo) if entry.rounds else None
        if value is not None:
            scored.append((-value, index, entry))
    return [entry for _value, _index, entry in sorted(scored, key=lambda x: (x[0], x[1]))]


def _document(config: TuneConfig, slo: Slo | None, measured: list[Measured], best: Measured | None,
              defaults: Measured | None, skipped: list[str], cores: int, generator: str, seconds: float
              ) -> dict[str, Any]:
    import datetime
    import platform

    def entry(m: Measured) -> dict[str, Any]:
        return {"label": m.candidate.label, "describe": m.candidate.describe(), "workers": m.candidate.workers,
                "settings": m.candidate.settings.to_toml(), "rounds": len(m.rounds), "error": m.error,
                "score": score(m.levels(), config.objective, slo),
                "levels": [dataclasses.asdict(r) | {"held": level_holds(r, slo)} for r in m.levels()]}

    best_score = score(best.levels(), config.objective, slo) if best else None
    default_score = score(defaults.levels(), config.objective, slo) if defaults and defaults.rounds else None
    return {
        "model": config.model, "model_dir": str(config.model_dir), "objective": config.objective,
        "slo": config.slo, "concurrency": list(config.concurrency), "level_seconds": config.level_seconds,
        "budget_s": config.budget_s, "seconds": round(seconds, 1), "load_generator": generator,
        "machine": f"{_cpu_name() or platform.machine()}, {cores} usable cores, Python {platform.python_version()}, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "date": datetime.date.today().isoformat(),
        "best": best.candidate.label if best else None, "best_score": best_score, "defaults_score": default_score,
        "gain_over_defaults": (_gain(best_score, default_score, config.objective)
                               if best_score is not None and default_score is not None else None),
        "skipped": skipped, "candidates": [entry(m) for m in measured],
    }


def _cpu_name() -> str | None:
    """The CPU's model name (Linux), for the report."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def _gain(best: float, defaults: float, objective: str) -> float:
    """best / defaults as a factor > 1 for better (for latency: defaults' p50 / best's p50)."""
    if objective == "latency":
        return defaults / best if best else float("inf")
    return best / defaults if defaults else float("inf")


def _write(config: TuneConfig, best: Measured | None, document: dict[str, Any]) -> list[Path]:
    """The report (JSON, Markdown, PNG), the best settings as kdeploy.toml, and TF Serving / Triton batching."""
    from kdeploy.tune.report import batching_files, markdown, plot

    out = config.out_dir
    written = [out / "tune.json", out / "tune.md"]
    write_text_atomic(out / "tune.json", json.dumps(document, indent=2) + "\n")
    write_text_atomic(out / "tune.md", markdown(document))
    if document["candidates"]:
        written.append(plot(document, out / "tune.png"))
    if best is None:
        return written
    header = (f"# Written by `kdeploy tune` on {document['date']} ({document['machine']}): candidate "
              f"{best.candidate.label!r}, objective {config.objective}"
              + (f", SLO {config.slo}" if config.slo else "") + f"; report: {out / 'tune.md'}\n")
    if best.candidate.workers > 1:
        header += f"# Measured with `kdeploy serve --workers {best.candidate.workers}` (a server flag).\n"
    text = header + best.candidate.settings.to_toml()
    write_text_atomic(out / SETTINGS_FILE, text)
    written.append(out / SETTINGS_FILE)
    written += batching_files(best.candidate.settings, config.model_dir, out)
    if config.write:
        write_text_atomic(config.model_dir / SETTINGS_FILE, text)
        written.append(config.model_dir / SETTINGS_FILE)
    return written

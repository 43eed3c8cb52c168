"""Run a load test: check the target, run Locust headless in a subprocess, and report from exact latencies.

Locust runs as `python -m locust -f loadtest/locustfile.py --headless ...` in a child process, because
importing Locust monkey-patches the whole process with gevent. This process never imports Locust: it checks
the target and the payload first (an unreachable target or a bad payload is exit status 2 within seconds),
bounds the child's time, and then reads the child's files. Locust writes into a hidden staging folder; each
file is moved into the output folder when the run is over, so readers never see half a report.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdeploy.common.errors import KdeployError, UsageError
from kdeploy.loadtest.config import ENV_PREFIX, PREFLIGHT_TIMEOUT_S, LoadTestConfig
from kdeploy.loadtest.shapes import ShapePlan, plan_for
from kdeploy.loadtest.slo import Slo, parse_slo, percentile_of, slo_verdict
from kdeploy.wire.protocols import REST_PROTOCOLS

if TYPE_CHECKING:
    from kdeploy.loadtest.recorder import Records

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STARTUP_ALLOWANCE_S = 30.0
"""Time the child may spend importing, starting and writing reports, on top of the run and stop timeout."""
LOCUST_FILES = ("locust_stats.csv", "locust_failures.csv", "locust_exceptions.csv", "locust_stats_history.csv",
                "locust.html", "locust.log", "latencies.npz")


class LoadTestError(KdeployError):
    """Locust did not complete the run (it failed, or overran its time): exit status 1, with its log's tail."""


@dataclass(frozen=True)
class PreparedRun:
    """A run whose target answered and whose payload fits: all that is left is to run it."""

    config: LoadTestConfig
    slo: Slo | None
    plan: ShapePlan


@dataclass(frozen=True)
class LoadTestResult:
    summary: dict[str, Any]
    out_dir: Path

    @property
    def slo_held(self) -> bool | None:
        return slo_verdict(self.summary)


def prepare(config: LoadTestConfig, echo: Callable[[str], None] = print) -> PreparedRun:
    """Check everything that can be checked before load is sent.

    Raises:
        UsageError: for a bad SLO or shape, an unreachable target (within a few seconds), a model the target
            does not serve, or a payload that cannot be built.
    """
    from kdeploy.loadtest.metadata import fetch_signature
    from kdeploy.loadtest.payloads import encode_payloads, request_feeds, signature_and_rows

    slo = parse_slo(config.slo) if config.slo else None
    plan = plan_for(config.workload.shape, config.user_count, config.spawn_per_second,
                    float(math.ceil(config.duration_s)), config.workload.step_users)
    settings, address = config.workload, config.target.address
    # Asking for the metadata proves the target is up, speaks the protocol and serves the model.
    served = fetch_signature(settings.protocol, address, settings.model, settings.model_version, PREFLIGHT_TIMEOUT_S,
                             tls=settings.tls)
    signature, rows = signature_and_rows(settings, address, PREFLIGHT_TIMEOUT_S)
    encode_payloads(settings, request_feeds(signature, settings.batch, rows, settings.seed))
    sent, expected = sorted(signature.input_names), sorted(served.input_names)
    if sent != expected:
        echo(f"kdeploy loadtest: warning: the payload's inputs {sent} are not the served model's {expected}; "
             "expect INVALID_ARGUMENT")
    return PreparedRun(config, slo, plan)


def locust_command(run: PreparedRun, staging: Path) -> list[str]:
    """The Locust command line for a prepared run, writing into `staging`."""
    config = run.config
    scheme = "https" if config.workload.tls is not None else "http"
    host = f"{scheme}://{config.target.address}" if config.protocol in REST_PROTOCOLS else config.target.address
    # Locust runs in the staging folder, so every path it gets must be absolute.
    workload = dataclasses.replace(
        config.workload, latency_file=staging.resolve() / "latencies.npz",
        repository=config.workload.repository.resolve() if config.workload.repository else None,
        data=config.workload.data.resolve() if config.workload.data else None)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "--users", str(config.user_count), "--spawn-rate", f"{config.spawn_per_second:g}",
        "--run-time", f"{math.ceil(config.duration_s)}s", "--stop-timeout", f"{math.ceil(config.stop_timeout_s)}",
        "--csv", str(staging.resolve() / "locust"), "--html", str(staging.resolve() / "locust.html"),
        "--only-summary", "--exit-code-on-error", "0", "--loglevel", "INFO",
        *workload.to_locust_args(),
    ]
    if config.processes > 1:
        command += ["--processes", str(config.processes)]
    return command


def _child_env() -> dict[str, str]:
    root = str(LOCUSTFILE.parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    # The command line is the whole configuration: a stray KDEPLOY_LOADTEST_* variable must not change the
    # child's workload behind the preflight's back.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    # The locustfile imports `loadtest`, `export` and `serve` from this checkout, installed or not.
    return {**env, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}


def _run_locust(run: PreparedRun, staging: Path) -> None:
    log_path = staging / "locust.log"
    deadline = run.plan.duration_s + run.config.stop_timeout_s + STARTUP_ALLOWANCE_S
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(locust_command(run, staging), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=staging, env=_child_env(), timeout=deadline,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"Locust did not finish within {deadline:.0f} s and was stopped; "
                                f"see {run.config.out_dir / 'locust.log'}: {_tail(log_path)}") from None
    if code != 0 or not (staging / "latencies.npz").is_file():
        raise LoadTestError(f"Locust exited with status {code}; "
                            f"see {run.config.out_dir / 'locust.log'}: {_tail(log_path)}")


def _tail(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors or lines or ["(empty log)"])[-1][:500]


def _publish(staging: Path, out_dir: Path) -> None:
    for name in LOCUST_FILES:
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)


def execute(run: PreparedRun, echo: Callable[[str], None] = print) -> LoadTestResult:
    """Run Locust for a prepared run and write `summary.json`, `latency.png` and Locust's reports."""
    from kdeploy.loadtest.recorder import load_records
    from kdeploy.loadtest.report import details, format_table, plot_latency, table_rows, write_summary

    config = run.config
    config.out_dir.mkdir(parents=True, exist_ok=True)
    load = f"{config.workload.rate:g} req/s (open loop, {config.user_count} users)" if config.workload.open_loop \
        else f"{config.user_count} users ({config.workload.shape})"
    echo(f"kdeploy loadtest: {load} on {config.target.name(config.protocol)} model {config.workload.model}, "
         f"{run.plan.duration_s:g} s")
    staging = Path(tempfile.mkdtemp(prefix=".locust-", dir=config.out_dir))
    try:
        started = datetime.datetime.now(datetime.UTC)
        try:
            _run_locust(run, staging)
        finally:
            _publish(staging, config.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    records = load_records(config.out_dir / "latencies.npz")
    summary = summary_document(run, records, started)
    write_summary(config.out_dir, summary)
    plot_latency(config.out_dir / "latency.png", records, summary)
    echo(format_table(table_rows([summary])))
    for line in details(summary):
        echo(line)
    echo(f"  wrote {config.out_dir}/summary.json, latency.png, locust.html, locust_stats.csv")
    return LoadTestResult(summary, config.out_dir)


def summary_document(run: PreparedRun, records: Records, started: datetime.datetime) -> dict[str, Any]:
    """`summary.json`: the run's settings, exact statistics, the SLO verdict and, for steps, the capacity."""
    from kdeploy.loadtest.stats import PERCENTILES, capacity, stage_results, summarize

    config = run.config
    wanted = list(PERCENTILES) + [p for t in (run.slo.terms if run.slo else ()) if (p := percentile_of(t.metric))]
    summary = summarize(records, wanted)
    summary["rows_per_s"] = summary["rps"] * config.workload.batch
    summary["slo"] = run.slo.evaluate(summary) if run.slo else None
    if run.plan.name == "step":
        summary["steps"] = stage_results(records, run.plan, run.slo, wanted)
        summary["capacity"] = capacity(summary["steps"]) if run.slo else None
    settings = config.workload
    summary["run"] = {
        "label": config.target.name(config.protocol), "target": config.target.address, "protocol": settings.protocol,
        "model": settings.model, "model_version": settings.model_version, "batch": settings.batch,
        "users": config.user_count, "spawn_rate": config.spawn_per_second, "rate": settings.rate,
        "mode": "open" if settings.open_loop else "closed", "shape": settings.shape,
        "duration_s": run.plan.duration_s, "max_requests": settings.max_requests, "processes": config.processes,
        "signature": "server" if settings.signature_from_server else str(Path(settings.repository or ".").resolve()),
        "started_at": started.isoformat(timespec="seconds"), "locust": _version("locust"),
    }
    summary["percentile_rule"] = ("exact latency of the request at rank floor(N*p) of all N requests "
                                  "(Locust's rule, unrounded); failures included, as in Locust's statistics")
    summary["files"] = {"locust_stats": "locust_stats.csv", "locust_failures": "locust_failures.csv",
                        "locust_html": "locust.html", "latencies": "latencies.npz", "plot": "latency.png"}
    return summary


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_loadtest(config: LoadTestConfig, echo: Callable[[str], None] = print) -> LoadTestResult:
    """The library entry point: prepare, then run. See `LoadTestConfig` for the settings.

    Raises:
        UsageError: bad settings or an unreachable target (before any load is sent).
        LoadTestError: Locust failed or overran.
    """
    return execute(prepare(config, echo), echo)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "target"


def run_compare(configs: Sequence[LoadTestConfig], out_dir: Path,
                echo: Callable[[str], None] = print) -> list[LoadTestResult]:
    """The same load against several targets, one after the other; one table and one plot for all.

    Every target is checked before the first run starts. Each run's own reports go to `out_dir/LABEL/`.
    """
    from kdeploy.loadtest.report import write_comparison

    labels = [c.target.name(c.protocol) for c in configs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"targets must differ (or carry labels, LABEL=HOST:PORT): {labels}")
    prepared = [prepare(dataclasses.replace(c, out_dir=Path(out_dir) / _slug(label)), echo)
                for c, label in zip(configs, labels)]
    results = [execute(run, echo) for run in prepared]
    echo("")
    echo(write_comparison(Path(out_dir), [r.summary for r in results]))
    echo(f"  wrote {out_dir}/comparison.md, comparison.png, comparison.json")
    return results

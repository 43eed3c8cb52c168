"""`kdeploy loadtest` end to end: a real `kdeploy serve` child, real Locust in a child, short bounded runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdeploy.loadtest.recorder import load_records
from tests.conftest import start_server

pytestmark = pytest.mark.slow  # every test here loads a server over models trained and exported with TensorFlow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"


@pytest.fixture(scope="module")
def server(exported_repo):
    proc = start_server("--repository", exported_repo)
    yield proc
    proc.stop()


def address(server, protocol: str) -> str:
    return server.rest if protocol.endswith("-rest") else server.grpc


def loadtest(kdeploy, out: Path, *args: object):
    result = kdeploy("loadtest", *args, "--out", out)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return result, summary


def locust_bucket(ms: float) -> int:
    """How Locust 2.x rounds a response time before counting it (`locust.stats.bucket_response_time`)."""
    if ms < 100:
        return round(ms)
    return int(round(ms, -1)) if ms < 1000 else int(round(ms, -2))


def assert_agrees_with_locust(summary: dict, out: Path) -> None:
    """Same requests and failures as Locust's CSV; the exact percentiles round to Locust's."""
    with open(out / "locust_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) == summary["requests"]
    assert int(total["Failure Count"]) == summary["failures"]
    latency = summary["latency_ms"]
    assert float(total["Average Response Time"]) == pytest.approx(latency["mean"], rel=1e-9)
    assert float(total["Min Response Time"]) == pytest.approx(latency["min"], rel=1e-9)
    assert float(total["Max Response Time"]) == pytest.approx(latency["max"], rel=1e-9)
    for column, name in (("50%", "p50"), ("90%", "p90"), ("95%", "p95"), ("99%", "p99"), ("100%", "max")):
        assert int(total[column]) == locust_bucket(latency[name]), (column, total[column], latency[name])
    assert float(total["Requests/s"]) == pytest.approx(summary["rps"], rel=0.02)


@pytest.mark.parametrize("protocol, source", [
    ("tfserving-grpc", "repository"), ("kserve-grpc", "server"), ("tfserving-rest", "server"),
    ("kserve-rest", "server"),
])
def test_short_run_for_each_protocol(kdeploy, server, exported_repo, tmp_path, protocol, source):
    signature = ["--repository", exported_repo] if source == "repository" else ["--signature-from-server"]
    result, summary = loadtest(kdeploy, tmp_path, "--target", address(server, protocol), "--protocol", protocol,
                               "--model", "digits", *signature, "--users", 4, "--duration", "2s")
    assert result.code == 0, result.err
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["failures_by_error"] == {}
    latency = summary["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert summary["run"]["protocol"] == protocol and summary["run"]["mode"] == "closed"
    assert_agrees_with_locust(summary, tmp_path)
    assert (tmp_path / "latency.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "locust.html").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone
    assert "p99 ms" in result.out and f"{summary['requests']}" in result.out


@pytest.mark.parametrize("protocol, status", [("kserve-grpc", "INVALID_ARGUMENT: "), ("tfserving-rest", "HTTP 400: "),
                                              ("kserve-rest", "HTTP 400: ")])
def test_invalid_argument_failures_are_grouped_under_the_error(kdeploy, server, exported_repo, tmp_path,
                                                              protocol, status):
    """A payload built for `digits` (input `image`) sent to model `two` (inputs `pixels`, `meta`)."""
    result, summary = loadtest(kdeploy, tmp_path, "--target", address(server, protocol), "--protocol", protocol,
                               "--model", "two", "--repository", exported_repo / "digits", "--users", 2,
                               "--duration", "2s")
    assert result.code == 0, result.err
    assert "expect INVALID_ARGUMENT" in result.out
    assert summary["requests"] > 0 and summary["failures"] == summary["requests"]
    [(error, count)] = summary["failures_by_error"].items()
    assert error.startswith(status) and "'image'" in error and count == summary["requests"]
    with open(tmp_path / "locust_failures.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["Error"] == error and int(row["Occurrences"]) == count
    assert_agrees_with_locust(summary, tmp_path)


def test_impossible_slo_exits_1_and_max_requests_ends_the_run(kdeploy, server, exported_repo, tmp_path):
    result, summary = loadtest(kdeploy, tmp_path, "--target", server.grpc, "--model", "tabular", "--repository",
                               exported_repo, "--users", 2, "--duration", "60s", "--max-requests", 200,
                               "--slo", "p99<0.001ms,errors<1%")
    assert result.code == 1, result.err
    assert summary["slo"]["held"] is False
    assert [t["held"] for t in summary["slo"]["terms"]] == [False, True]
    assert "MISSED" in result.out
    # --max-requests stopped the 60 s run early (the check runs every 0.1 s, so a few more may have been sent):
    # the stop is Locust's own log line. (Locust's child has a timeout of its own, so a run that ignored
    # --max-requests could not hang the test either.)
    assert summary["requests"] >= 200 and summary["run"]["duration_s"] == 60
    assert "200 requests reached (--max-requests), stopping" in (tmp_path / "locust.log").read_text()


def test_open_loop_holds_the_rate_and_measures_from_the_intended_send_time(kdeploy, server, tmp_path):
    result, summary = loadtest(kdeploy, tmp_path, "--target", server.grpc, "--model", "digits",
                               "--signature-from-server", "--rate", "200/s", "--duration", "2s")
    assert result.code == 0, result.err
    assert summary["run"]["mode"] == "open" and summary["run"]["users"] == 20
    assert summary["send_rate"] == pytest.approx(200, rel=0.03)
    records = load_records(tmp_path / "latencies.npz")
    gaps = np.diff(np.sort(records.start))
    # Send times are the schedule's, 5 ms apart, whatever the responses did.
    assert np.median(gaps) == pytest.approx(0.005, rel=0.05)
    assert_agrees_with_locust(summary, tmp_path)


def test_step_shape_reports_the_capacity(kdeploy, server, exported_repo, tmp_path):
    result, summary = loadtest(kdeploy, tmp_path, "--target", server.grpc, "--model", "digits", "--repository",
                               exported_repo, "--shape", "step", "--users", 4, "--step-users", 2,
                               "--duration", "3s", "--slo", "p99<2000ms")
    assert result.code == 0, result.err
    assert [s["users"] for s in summary["steps"]] == [2, 4]
    assert all(s["requests"] > 0 and s["slo_held"] for s in summary["steps"])
    assert summary["capacity"]["rps"] == max(s["rps"] for s in summary["steps"])
    assert "capacity:" in result.out


def test_compare_writes_one_table_and_one_plot(kdeploy, server, exported_repo, tmp_path):
    result = kdeploy("loadtest", "compare", "--target", f"tfs=tfserving-grpc://{server.grpc}",
                     "--target", f"kserve=kserve-grpc://{server.grpc}", "--model", "digits",
                     "--repository", exported_repo, "--users", 2, "--duration", "2s", "--out", tmp_path)
    assert result.code == 0, result.err
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    table = (tmp_path / "comparison.md").read_text()
    assert "| tfs | tfserving-grpc |" in table and "| kserve | kserve-grpc |" in table
    runs = json.loads((tmp_path / "comparison.json").read_text())["runs"]
    assert [r["run"]["label"] for r in runs] == ["tfs", "kserve"] and all(r["requests"] > 0 for r in runs)
    assert (tmp_path / "tfs" / "locust_stats.csv").exists() and (tmp_path / "kserve" / "latency.png").exists()


def test_plain_locust_distributed_configured_by_env_vars(server, exported_repo, tmp_path):
    """`locust -f loadtest/locustfile.py --processes 2`: a master and two workers; the workers ship exact latencies."""
    env = {**os.environ, "KDEPLOY_LOADTEST_MODEL": "digits", "KDEPLOY_LOADTEST_REPOSITORY": str(exported_repo),
           "KDEPLOY_LOADTEST_PROTOCOL": "kserve-grpc", "KDEPLOY_LOADTEST_LATENCY_FILE": str(tmp_path / "lat.npz")}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--processes", "2",
               "--host", server.grpc, "-u", "4", "-r", "4", "-t", "3s", "--csv", str(tmp_path / "locust"),
               "--only-summary"]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = load_records(tmp_path / "lat.npz")
    with open(tmp_path / "locust_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    assert len(records) > 0 and int(total["Request Count"]) == len(records)
    assert "KServeGrpcUser" in proc.stderr and (records.error < 0).all()

import socket
import subprocess
import sys

import numpy as np
import pytest

from kdeploy.loadtest.recorder import LatencyRecorder, RequestError
from kdeploy.loadtest.report import format_table, markdown_table, plot_comparison, plot_latency, table_rows
from kdeploy.loadtest.stats import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_summary(label: str = "kserve-grpc://127.0.0.1:1", failures: int = 3):
    recorder = LatencyRecorder()
    recorder.clear(test_start=50.0)
    rng = np.random.default_rng(0)
    for i, ms in enumerate(rng.lognormal(0.5, 0.6, size=400)):
        error = RequestError("INVALID_ARGUMENT: bad") if i < failures else None
        recorder.on_request(response_time=float(ms), exception=error, start_time=50.0 + i / 100)
    records = recorder.records()
    summary = summarize(records)
    summary.update(slo=None, run={"label": label, "protocol": "kserve-grpc", "model": "digits", "batch": 1,
                                  "users": 4, "rate": None})
    return records, summary


def test_latency_plot_is_a_png(tmp_path):
    records, summary = run_summary()
    plot_latency(tmp_path / "latency.png", records, summary)
    assert (tmp_path / "latency.png").read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]  # no temporary file left behind


def test_latency_plot_of_a_run_without_requests(tmp_path):
    empty = LatencyRecorder().records()
    summary = {**summarize(empty), "slo": None,
               "run": {"label": "x", "protocol": "p", "model": "m", "batch": 1, "users": 1, "rate": None}}
    plot_latency(tmp_path / "latency.png", empty, summary)
    assert (tmp_path / "latency.png").read_bytes()[:8] == PNG_MAGIC


def test_tables_and_comparison_plot(tmp_path):
    summaries = [run_summary("a")[1], run_summary("b", failures=0)[1]]
    rows = table_rows(summaries)
    assert rows[0][:3] == ["target", "protocol", "model"] and [r[0] for r in rows[1:]] == ["a", "b"]
    assert "3 (0.75%)" in rows[1]
    text = format_table(rows)
    assert len(text.splitlines()) == 3
    assert markdown_table(rows).splitlines()[1].startswith("|---|")
    plot_comparison(tmp_path / "comparison.png", summaries)
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_module_is_cheap_to_import():
    """`kdeploy --help` builds every parser: loadtest's must not import Locust (gevent patching), TF or plotting."""
    code = ("import sys; import kdeploy.loadtest.cli\n"
            "heavy = ('locust', 'gevent', 'tensorflow', 'grpc', 'numpy', 'matplotlib')\n"
            "mine = sorted(m for m in heavy if m in sys.modules)\n"
            "from kdeploy.cli import build_parser; build_parser()\n"
            "whole = sorted(m for m in ('locust', 'gevent', 'tensorflow') if m in sys.modules)\n"
            "print(mine, whole); sys.exit(1 if mine or whole else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("argv, words", [
    (["--target", "127.0.0.1:1", "--signature-from-server", "--out", "o"], "--model NAME is required"),
    (["--model", "m", "--signature-from-server", "--out", "o"], "--target HOST:PORT is required"),
    (["--target", "127.0.0.1:1", "--model", "m", "--out", "o"], "--repository REPO"),
    (["--target", "127.0.0.1:1", "--model", "m", "--signature-from-server"], "--out DIR is required"),
    (["--target", "10.0.0.1:8500", "--model", "m", "--signature-from-server", "--out", "o"], "--allow-remote"),
    (["--target", "127.0.0.1:1", "--model", "m", "--signature-from-server", "--out", "o", "--duration", "0s"],
     "between 1s and 24h"),
    (["--target", "127.0.0.1:1", "--model", "m", "--signature-from-server", "--out", "o", "--rate", "fast"],
     "rate 'fast'"),
    (["compare", "--target", "127.0.0.1:1", "--model", "m", "--signature-from-server", "--out", "o"],
     "at least two --target"),
])
def test_bad_arguments_exit_2_with_one_line(kdeploy, argv, words):
    result = kdeploy("loadtest", *argv)
    assert result.code == 2
    assert words in result.err and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_argparse_errors_exit_2(kdeploy):
    result = kdeploy("loadtest", "--protocol", "smtp")
    assert result.code == 2 and "invalid choice" in result.err


def test_unreachable_target_exits_2_quickly(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A child process, so a hang fails at `timeout` (TimeoutExpired) instead of running the 60 s load test; the
    # preflight gives up within its own limit, which the message names.
    result = subprocess.run([sys.executable, "-m", "kdeploy", "loadtest", "--target", f"127.0.0.1:{port}", "--model",
                             "digits", "--signature-from-server", "--duration", "60s", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=45)
    assert result.returncode == 2, result.stderr
    assert "cannot reach" in result.stderr and "within 3 s" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

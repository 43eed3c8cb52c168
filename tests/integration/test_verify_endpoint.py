"""Served-output parity: `kdeploy verify --endpoint` compares what a running server returns with the Keras model."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_server(exported_repo):
    proc = start_server("--repository", exported_repo)
    yield proc
    assert proc.stop() == 0


@pytest.mark.parametrize("protocol", ["tfserving-grpc", "kserve-grpc", "tfserving-rest", "kserve-rest"])
def test_served_outputs_match_keras_over_every_protocol(onnx_server, exported_repo, kdeploy, protocol):
    address = onnx_server.rest if protocol.endswith("-rest") else onnx_server.grpc
    for model in ("digits", "two"):
        result = kdeploy("verify", exported_repo / model, "--endpoint", address, "--protocol", protocol)
        assert result.code == 0, result.out + result.err
        report = json.loads((exported_repo / model / "1" / f"served-{protocol}" / "parity.json").read_text())
        assert report["passed"] and [f["format"] for f in report["formats"]] == [protocol]
        assert report["samples"] > 1 and report["formats"][0]["outputs"][0]["max_abs_error"] <= 1e-5


def test_a_quantised_server_fails_fp32_served_parity(digits_trained, tmp_path, kdeploy):
    assert kdeploy("export", digits_trained.model_path, "--repository", tmp_path, "--name", "q", "--formats",
                   "tflite", "--tflite-quantization", "dynamic-int8").code == 0
    proc = start_server("--repository", tmp_path, "--backend", "tflite", "--no-rest")
    try:
        result = kdeploy("verify", tmp_path / "q", "--endpoint", proc.grpc)
        assert result.code == 1 and "FAIL tfserving-grpc output 'probabilities'" in result.out
        relaxed = kdeploy("verify", tmp_path / "q", "--endpoint", proc.grpc, "--atol", "tfserving-grpc=0.5")
        assert relaxed.code == 0, relaxed.out
    finally:
        assert proc.stop() == 0


def test_unreachable_endpoint_is_a_usage_error(exported_repo):
    # A child process, so a client that waits forever fails the test at `timeout` (TimeoutExpired) instead of
    # hanging it; the client gives up after its own connection limit.
    result = subprocess.run([sys.executable, "-m", "kdeploy", "verify", str(exported_repo / "digits"), "--endpoint",
                             "127.0.0.1:9", "--protocol", "kserve-grpc"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot reach a gRPC server at 127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr

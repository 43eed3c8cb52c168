"""No silent skips: a model folder the server cannot serve is named, with its reason, everywhere it shows."""

from __future__ import annotations

import shutil
import subprocess
import sys

import grpc
import pytest

from tests.conftest import start_server


@pytest.fixture
def mixed_repo(exported_repo, tmp_path):
    """`digits` (good), `empty` (no version folder) and `foreign` (a version folder without a manifest or an ONNX
    file, so nothing for the onnx backend)."""
    shutil.copytree(exported_repo / "digits", tmp_path / "digits")
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign" / "7").mkdir(parents=True)
    (tmp_path / "foreign" / "7" / "saved_model.pb").write_bytes(b"not kdeploy's")
    return tmp_path


def test_the_good_model_is_served_and_the_broken_ones_named_with_their_reasons(mixed_repo):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    proc = start_server("--repository", mixed_repo, "--no-rest")
    try:
        assert "SERVING" in proc.banner and "models=digits:1(AVAILABLE)" in proc.banner
        assert "unservable=empty,foreign" in proc.banner
        with grpc.insecure_channel(proc.grpc) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "empty"}))
        [entry] = status.model_version_status
        assert entry.state == get_model_status_pb2.ModelVersionStatus.END
        assert "no version folder" in entry.status.error_message
    finally:
        assert proc.stop() == 0
    log = proc.log()
    assert "model empty cannot be served: no version folder" in log
    assert "model foreign cannot be served: no version in" in log
    assert "(versions [7]) has a manifest.json or an artifact for --backend onnx (model.onnx)" in log


def test_nothing_to_serve_is_exit_2_with_the_reasons(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "kdeploy", "serve", "--repository", str(tmp_path), "--grpc-port",
                           "0", "--no-rest", "--no-metrics"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kdeploy serve: error: nothing to serve (model empty: no version folder")
    assert "--wait-for-models" in last and "Traceback" not in proc.stderr


def test_wait_for_models_keeps_polling_until_a_version_appears(exported_repo, tmp_path):
    (tmp_path / "digits").mkdir()
    proc = start_server("--repository", tmp_path, "--no-rest", "--wait-for-models", "--poll-seconds", "0.2")
    try:
        assert "NOT_SERVING" in proc.banner and "unservable=digits" in proc.banner
        shutil.copytree(exported_repo / "digits" / "1", tmp_path / "digits" / ".incoming")
        (tmp_path / "digits" / ".incoming").rename(tmp_path / "digits" / "1")
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(proc.grpc) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="digits"), timeout=30)
            assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
    finally:
        assert proc.stop() == 0

"""End to end with the official clients: export to and serve from object storage (rclone's S3 server, Azurite).

Each test starts `kdeploy serve` in a subprocess on free loopback ports, with credentials in its environment as in
a pod, and watches it through TF Serving's gRPC API and /metrics while versions arrive, break, or the store stops.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from kdeploy.storage.layout import CLAIM_FILE
from kdeploy.storage.mirror import JITTER
from kdeploy.storage.objects import ObjectStorage
from kdeploy.storage.publish import publish_version
from kdeploy.storage.urls import parse_url
from tests.clients import keras_outputs, tfs_predict
from tests.conftest import start_server
from tests.integration.test_serve_lifecycle import SteadyLoad, metric, scrape, wait_for

pytestmark = pytest.mark.slow

POLL = 1.0
"""The remote poll interval of these servers (seconds)."""


def statuses(address: str, name: str) -> dict[int, tuple[int, str]]:
    """Version -> (state, error message), from TF Serving's GetModelStatus."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": name}), timeout=10)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


def stop(server) -> None:
    """Stop a server; it must drain and exit 0 (its log is the message when it does not)."""
    try:
        code = server.stop()
    except subprocess.TimeoutExpired:
        server.process.kill()
        code = "no exit within 30 s"
    assert code == 0, f"exit {code}; log:\n{server.log()[-4000:]}"


def images(repo: Path, rows: int = 8) -> np.ndarray:
    with np.load(repo / "digits" / "1" / "validation.npz") as data:
        return data["x"][:rows]


def serve(url: str, cache: Path, env: dict[str, str], *extra: object):
    return start_server("--repository", url, "--cache-dir", cache, "--storage-poll-seconds", POLL, "--model",
                        "digits", *extra, env=env)


def test_the_demo_model_exported_to_s3_serves_correct_answers(kdeploy, digits_trained, s3_env, tmp_path):
    result = kdeploy("export", digits_trained.model_path, "--repository", "s3://models/demo", "--name", "digits")
    assert result.code == 0, result.out + result.err
    assert "upload [" in result.out and "kdeploy export: wrote s3://models/demo/digits/1" in result.out
    server = serve("s3://models/demo", tmp_path / "cache", s3_env)
    try:
        assert "models=digits:1(AVAILABLE)" in server.banner
        cached_repo = tmp_path / "cache" / "s3" / "models" / "demo"
        x = images(cached_repo)
        got = tfs_predict(server.grpc, "digits", {"image": x})["probabilities"]
        want = keras_outputs(cached_repo, "digits", {"image": x})["probabilities"]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
        assert metric(scrape(server.metrics), "kdeploy_repository_sync_seconds_count", model="digits") == 1
    finally:
        stop(server)
    verified = kdeploy("verify", "s3://models/demo/digits", "--cache-dir", tmp_path / "verify-cache", "--samples", 64)
    assert verified.code == 0, verified.out + verified.err
    configs = kdeploy("configs", "--repository", "s3://models/demo", "--out", tmp_path / "configs")
    assert configs.code == 0, configs.err
    assert 'name: "digits"' in (tmp_path / "configs" / "tfserving" / "models.config").read_text()


def test_export_finds_a_version_the_store_holds_in_a_padded_folder(kdeploy, digits_trained, exported_repo, s3_env):
    """Another tool wrote version 2 as `0002/` (as TF Serving names folders): it is version 2, not free."""
    storage = ObjectStorage(parse_url("s3://models/padded/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "0002", progress=lambda _: None)
    result = kdeploy("export", digits_trained.model_path, "--repository", "s3://models/padded", "--name", "digits",
                     "--version", "2")
    assert result.code == 2 and "version s3://models/padded/digits/0002 already exists" in result.err, result.err
    assert storage.list_folders() == ["0002"]


def test_versions_roll_out_under_load_and_unfinished_or_corrupt_ones_never_serve(exported_repo, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/rollout/digits"))
    version = exported_repo / "digits" / "1"
    publish_version(version, storage, "1", progress=lambda _: None)
    server = serve("s3://models/rollout", tmp_path / "cache", s3_env)
    try:
        with SteadyLoad(server.grpc, images(exported_repo, 1)) as load:
            time.sleep(0.5)
            publish_version(version, storage, "2", progress=lambda _: None)
            published = time.monotonic()
            wait_for(lambda: any(a[1] == 2 for a in load.answers[-20:]), timeout=30, message="version 2 to serve")
            took = min(sent for sent, answer in load.answers if answer == 2) - published
            # One poll interval (with its jitter), plus loading and warming the version up.
            assert took < POLL * (1 + JITTER) + 3.0, took
            # 3: an export stopped before its manifest (its claim still there); 4: a file corrupted after upload.
            for name in ("model.onnx", "saved_model.pb"):
                storage.upload(version / name, f"3/{name}")
            (tmp_path / "claim").write_text("{}")
            storage.upload(tmp_path / "claim", f"3/{CLAIM_FILE}")
            publish_version(version, storage, "4", progress=lambda _: None)
            (tmp_path / "model.onnx").write_bytes(b"corrupted")
            storage.upload(tmp_path / "model.onnx", "4/model.onnx")
            wait_for(lambda: 4 in statuses(server.grpc, "digits"), timeout=30, message="version 4 to be refused")
            time.sleep(2.5 * POLL)
        assert load.failures() == [] and len(load.answers) > 50
        state = statuses(server.grpc, "digits")
        assert state[2][0] == 30 and 3 not in state  # AVAILABLE; the unfinished one is unknown to the server
        assert state[4][0] == 50 and "onnx: model.onnx does not match the sha256 in manifest.json" in state[4][1]
        assert {a[1] for a in load.answers} <= {1, 2}
        assert metric(scrape(server.metrics), "kdeploy_repository_poll_errors_total", model="digits",
                      kind="refused") == 1
    finally:
        stop(server)


def test_a_store_outage_disturbs_nothing_and_a_warm_restart_fetches_nothing(exported_repo, s3_server, s3_env,
                                                                           tmp_path):
    storage = ObjectStorage(parse_url("s3://models/outage/digits"))
    version = exported_repo / "digits" / "1"
    publish_version(version, storage, "1", progress=lambda _: None)
    cache = tmp_path / "cache"
    server = serve("s3://models/outage", cache, s3_env)
    try:
        with SteadyLoad(server.grpc, images(exported_repo, 1)) as load:
            s3_server.stop()
            try:
                time.sleep(2 * POLL)  # two poll intervals with the store gone, and until two polls have failed
                wait_for(lambda: metric(scrape(server.metrics), "kdeploy_repository_poll_errors_total",
                                        model="digits", kind="unreachable") >= 2, timeout=30, message="two errors")
                assert statuses(server.grpc, "digits")[1][0] == 30
            finally:
                s3_server.start()
            publish_version(version, storage, "2", progress=lambda _: None)
            # Backed off after the errors (1, 2, 4 poll intervals, +-20%): picked up within the next ones.
            wait_for(lambda: any(a[1] == 2 for a in load.answers[-20:]), timeout=30, message="version 2 after")
        assert load.failures() == []
        log = server.log()
        assert log.count("polling s3://models/outage/digits failed") == 1  # once per change of state
        assert "polling s3://models/outage/digits works again" in log
    finally:
        stop(server)
    gets, lists = len(s3_server.requests("GET OBJECT")), len(s3_server.requests("LIST BUCKET"))
    restarted = serve("s3://models/outage", cache, s3_env)
    try:
        assert "models=digits:2(AVAILABLE)" in restarted.banner
        assert len(s3_server.requests("GET OBJECT")) == gets  # counted at the store: no file fetched again
        assert len(s3_server.requests("LIST BUCKET")) > lists
    finally:
        stop(restarted)


def test_wrong_credentials_stop_the_start_in_one_line_without_the_secret(exported_repo, s3_server, s3_env, tmp_path):
    publish_version(exported_repo / "digits" / "1", ObjectStorage(parse_url("s3://models/creds/digits")), "1",
                    progress=lambda _: None)
    secret = "not-the-right-secret-5c1f0e"
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": secret, "TF_CPP_MIN_LOG_LEVEL": "3"}
    import os

    for url, command in (("s3://models/creds", ["serve", "--repository", "s3://models/creds", "--cache-dir",
                                                 str(tmp_path), "--grpc-port", "0", "--rest-port", "0",
                                                 "--metrics-port", "0"]),
                         ("s3://models/creds/digits", ["verify", "s3://models/creds/digits", "--cache-dir",
                                                       str(tmp_path)]),
                         ("s3://models/creds/digits", ["export", str(exported_repo / "digits" / "1" / "model.keras"),
                                                       "--repository", "s3://models/creds", "--name", "digits"])):
        done = subprocess.run([sys.executable, "-m", "kdeploy", *command], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert lines[-1].startswith(f"kdeploy {command[0]}: error: {url}: listing failed: 403 Forbidden"), lines
        assert "Traceback" not in done.stderr and secret not in done.stdout + done.stderr


def test_serving_from_azure_through_a_model_config_file(exported_repo, azurite, tmp_path):
    env = azurite.env()
    import os

    os.environ.update(env)  # this process publishes with the same credentials
    try:
        publish_version(exported_repo / "digits" / "1", ObjectStorage(parse_url("az://models/cfg/digits")), "1",
                        progress=lambda _: None)
    finally:
        for key in env:
            os.environ.pop(key)
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "digits" base_path: "az://models/cfg/digits" '
                      'model_platform: "tensorflow" } }\n')
    server = start_server("--model-config-file", config, "--cache-dir", tmp_path / "cache", env=env)
    try:
        x = images(exported_repo)
        got = tfs_predict(server.grpc, "digits", {"image": x})["probabilities"]
        want = keras_outputs(exported_repo, "digits", {"image": x})["probabilities"]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    finally:
        stop(server)


def test_the_server_images_packages_serve_from_a_bucket(exported_repo, s3_env, tmp_path):
    """Only what requirements/server.txt installs is importable (no TensorFlow), as in the server image."""
    import os
    import re

    from tests.deploy.test_images import run_guarded

    publish_version(exported_repo / "digits" / "1", ObjectStorage(parse_url("s3://models/image/digits")), "1",
                    progress=lambda _: None)
    argv = ["serve", "--repository", "s3://models/image", "--cache-dir", str(tmp_path), "--grpc-port", "0",
            "--rest-port", "0", "--metrics-port", "0", "--drain-grace-seconds", "0"]
    proc = run_guarded("server.txt", [], argv, env={**os.environ, **s3_env})
    try:
        banner = proc.stdout.readline()
        assert "SERVING" in banner and "digits:1(AVAILABLE)" in banner, banner + proc.stderr.read()
        x = images(exported_repo)
        got = tfs_predict(re.search(r"grpc=(\S+)", banner)[1], "digits", {"image": x})["probabilities"]
        np.testing.assert_allclose(got, keras_outputs(exported_repo, "digits", {"image": x})["probabilities"],
                                   atol=1e-5, rtol=1e-4)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

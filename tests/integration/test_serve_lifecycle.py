"""The server under load and change: batching, metrics, hot reload, corrupt versions, drain on SIGTERM, logs."""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.clients import keras_outputs
from tests.conftest import start_server

pytestmark = pytest.mark.slow


def predict_stub(address: str):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(name: str, x: np.ndarray, version: int | None = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(x))
    return request


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a metric (0 when absent)."""
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class SteadyLoad:
    """Clients sending requests in a loop; every answer is recorded (version served, or the error)."""

    def __init__(self, address: str, x: np.ndarray, threads: int = 2, pause: float = 0.002) -> None:
        self.answers: list[tuple[float, int | str]] = []
        self._pause = pause
        self._stop = threading.Event()
        self._request = predict_request("digits", x)
        self._address = address
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        channel, stub = predict_stub(self._address)
        with channel:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = stub.Predict(self._request, timeout=10)
                    self.answers.append((sent, response.model_spec.version.value))
                except grpc.RpcError as exc:
                    self.answers.append((sent, exc.code().name))
                time.sleep(self._pause)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def failures(self) -> list:
        return [a for a in self.answers if isinstance(a[1], str)]


def wait_for(condition, timeout: float = 30.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def version_states(address: str, name: str) -> dict[int, int]:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": name}), timeout=10)
    return {s.version: s.state for s in response.model_version_status}


@pytest.fixture
def digits_repo(exported_repo, tmp_path) -> Path:
    shutil.copytree(exported_repo / "digits", tmp_path / "repo" / "digits")
    return tmp_path / "repo"


def test_batching_merges_requests_and_metrics_count_them(exported_repo, tmp_path):
    params = tmp_path / "batching_parameters.txt"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 5000 }\n"
                      "num_batch_threads { value: 1 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    proc = start_server("--repository", exported_repo, "--model", "digits", "--enable-batching",
                        "--batching-parameters-file", params)
    try:
        with np.load(exported_repo / "digits" / "1" / "validation.npz") as data:
            images = data["x"][:40]
        want = keras_outputs(exported_repo, "digits", {"image": images})["probabilities"]
        results: dict[int, np.ndarray] = {}
        # The 20 requests must arrive together for the batcher to merge them: each client connects first, then all
        # send at once (connecting one by one would spread them further apart than a 30 µs model takes to run).
        start = threading.Barrier(20)

        def client(i: int) -> None:
            import tensorflow as tf

            channel, stub = predict_stub(proc.grpc)
            with channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                request = predict_request("digits", images[i * 2:i * 2 + 2])
                start.wait(timeout=60)
                response = stub.Predict(request, timeout=30)
                results[i] = tf.make_ndarray(response.outputs["probabilities"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i in range(20):  # each caller got exactly its own two rows
            np.testing.assert_allclose(results[i], want[i * 2:i * 2 + 2], atol=1e-5, rtol=1e-4)
        text = scrape(proc.metrics)
        assert metric(text, "kdeploy_requests_total", model="digits", version="1", protocol="tfserving-grpc",
                      status="OK") == 20
        batches = metric(text, "kdeploy_batch_size_count", model="digits")
        rows = metric(text, "kdeploy_batch_size_sum", model="digits")
        assert rows == 40 and batches < 20, (batches, rows)  # merged: fewer executions than requests
        assert metric(text, "kdeploy_model_version_state", model="digits", version="1") == 30
        assert metric(text, "kdeploy_request_latency_seconds_bucket", model="digits", protocol="tfserving-grpc",
                      le="0.0005") >= 0  # sub-millisecond buckets exist
        assert 'le="5e-05"' in text and "kdeploy_queue_seconds_bucket" in text
        big = np.repeat(images[:1], 20, axis=0)  # over max_batch_size: runs alone, not dropped
        channel, stub = predict_stub(proc.grpc)
        with channel:
            response = stub.Predict(predict_request("digits", big), timeout=30)
            assert response.outputs["probabilities"].tensor_shape.dim[0].size == 20
            with pytest.raises(grpc.RpcError):
                stub.Predict(predict_request("nope", big[:1]), timeout=30)
        text = scrape(proc.metrics)
        assert metric(
            text, "kdeploy_requests_total", model="_unknown", protocol="tfserving-grpc", status="NOT_FOUND"
        ) == 1
    finally:
        assert proc.stop() == 0


def test_overload_is_refused_with_unavailable_and_the_server_stays_up(exported_repo, tmp_path):
    params = tmp_path / "batching_parameters.txt"
    params.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
                      "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    proc = start_server("--repository", exported_repo, "--model", "text", "--enable-batching",
                        "--batching-parameters-file", params, "--grpc-threads", "64")

    def rss() -> int:
        status = Path(f"/proc/{proc.process.pid}/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS:")))

    try:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text"
        request.inputs["tokens"].CopyFrom(tf.make_tensor_proto(np.ones((1, 12), np.int32)))
        before = rss()
        codes: list[str] = []

        def client() -> None:
            channel, stub = predict_stub(proc.grpc)
            with channel:
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    try:
                        stub.Predict(request, timeout=10)
                        codes.append("OK")
                    except grpc.RpcError as exc:
                        codes.append(exc.code().name)
                        if exc.code() == grpc.StatusCode.UNAVAILABLE:
                            assert "queue full" in exc.details()

        threads = [threading.Thread(target=client) for _ in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        after = rss()
        print(f"overload: {len(codes)} requests, {codes.count('UNAVAILABLE')} refused; RSS {before} -> {after} KiB")
        assert set(codes) <= {"OK", "UNAVAILABLE"} and codes.count("OK") > 0 and codes.count("UNAVAILABLE") > 0
        channel, stub = predict_stub(proc.grpc)
        with channel:
            assert stub.Predict(request, timeout=10).outputs["positive"].tensor_shape.dim[0].size == 1
    finally:
        assert proc.stop() == 0


def test_roll_out_and_back_fails_no_request(digits_repo):
    proc = start_server("--repository", digits_repo, "--poll-seconds", "0.3", "--no-rest")
    try:
        x = np.zeros((2, 8, 8, 1), np.float32)
        with SteadyLoad(proc.grpc, x) as load:
            time.sleep(0.5)
            staging = digits_repo / "digits" / ".incoming"
            shutil.copytree(digits_repo / "digits" / "1", staging)
            staging.rename(digits_repo / "digits" / "2")  # a complete version appears at once
            wait_for(lambda: version_states(proc.grpc, "digits") == {1: 50, 2: 30}, message="1 -> 2")
            time.sleep(0.5)
            shutil.rmtree(digits_repo / "digits" / "2")  # roll back
            wait_for(lambda: version_states(proc.grpc, "digits") == {1: 30, 2: 50}, message="2 -> 1")
            time.sleep(0.5)
        served = [v for _, v in load.answers if isinstance(v, int)]
        assert load.failures() == [] and len(served) > 20
        assert 2 in served and served[-1] == 1 and served[0] == 1
    finally:
        assert proc.stop() == 0


def test_a_corrupt_new_version_never_replaces_the_working_one(digits_repo):
    proc = start_server("--repository", digits_repo, "--poll-seconds", "0.3", "--no-rest")
    try:
        with SteadyLoad(proc.grpc, np.zeros((1, 8, 8, 1), np.float32)) as load:
            bad = digits_repo / "digits" / ".incoming"
            shutil.copytree(digits_repo / "digits" / "1", bad)
            with open(bad / "model.onnx", "ab") as handle:
                handle.write(b"garbage")
            bad.rename(digits_repo / "digits" / "2")
            wait_for(lambda: version_states(proc.grpc, "digits").get(2) == 50, message="version 2 END")
            time.sleep(0.5)
        assert version_states(proc.grpc, "digits") == {1: 30, 2: 50}
        assert load.failures() == [] and {v for _, v in load.answers} == {1}
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        with grpc.insecure_channel(proc.grpc) as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "digits", "version": {"value": 2}}))
        assert "sha256" in status.model_version_status[0].status.error_message
    finally:
        assert proc.stop() == 0


def test_sigterm_drains_without_failing_accepted_requests(exported_repo):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    grace, drain = 3.0, 10.0
    proc = start_server("--repository", exported_repo, "--model", "digits", "--drain-grace-seconds", grace,
                        "--drain-seconds", drain, "--no-rest")
    x = np.zeros((256, 8, 8, 1), np.float32)
    with SteadyLoad(proc.grpc, x, threads=3) as load:
        time.sleep(0.5)
        signalled = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with grpc.insecure_channel(proc.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # while requests are still accepted
        # The drain is bounded by --drain-seconds from the signal (plus interpreter exit): the wait itself is the
        # check, raising TimeoutExpired if the server is still running by then.
        try:
            code = proc.process.wait(timeout=signalled + drain + 2 - time.monotonic())
        except subprocess.TimeoutExpired:
            proc.process.kill()
            pytest.fail(f"the server did not exit within --drain-seconds {drain} (+2 s) of SIGTERM")
        time.sleep(0.3)
    assert code == 0
    before = [a for a in load.answers if a[0] < signalled]
    during_grace = [a for a in load.answers if signalled + 0.3 <= a[0] < signalled + grace - 1.5]
    assert before and all(isinstance(v, int) for _, v in before)  # accepted before SIGTERM: all answered
    assert during_grace and all(isinstance(v, int) for _, v in during_grace)  # still served in the grace period
    late = [v for t, v in load.answers if t > signalled + grace + 0.3]
    assert late and all(v == "UNAVAILABLE" for v in late)  # refused after the grace period
    logs = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in logs]
    assert any("loaded and warmed up" in m for m in messages) and any("stopped after draining" in m for m in messages)
    loaded = next(entry for entry in logs if "loaded and warmed up" in entry["message"])
    assert loaded["model"] == "digits" and loaded["version"] == 1 and loaded["level"] == "info"
    proc.stop()


def test_a_drain_under_load_answers_or_refuses_every_request_and_cancels_none(exported_repo):
    # Clients retry UNAVAILABLE, not CANCELLED: every request accepted before the refusal point is answered, every
    # later one refused with UNAVAILABLE, even with 8 clients sending back to back through the drain.
    proc = start_server("--repository", exported_repo, "--model", "digits", "--drain-grace-seconds", 0.5,
                        "--drain-seconds", 10, "--no-rest")
    with SteadyLoad(proc.grpc, np.zeros((1, 8, 8, 1), np.float32), threads=8, pause=0) as load:
        wait_for(lambda: len(load.answers) > 200, message="load")
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=30) == 0
        time.sleep(0.5)  # clients keep sending into the closed port: those never reached a server
    codes = collections.Counter(v if isinstance(v, str) else "OK" for _, v in load.answers)
    assert codes["OK"] > 200 and codes["UNAVAILABLE"] > 0, codes
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes
    proc.stop()

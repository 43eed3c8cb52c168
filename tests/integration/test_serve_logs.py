"""Payload and access logs of the real server: requests sent with the official clients are logged exactly, replay
through `kdeploy verify` and `kdeploy loadtest`, and a sink that blocks costs requests nothing (records are dropped
and counted instead)."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from tests.conftest import start_server

pytestmark = pytest.mark.slow

N = 12


def _image(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 8, 8, 1), dtype=np.float32)


def _tfs_predict(address: str, image: np.ndarray, traceparent: str) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    with grpc.insecure_channel(address) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30, metadata=(("traceparent", traceparent),))


def _kserve_client(address: str):
    import tritonclient.grpc as triton

    return triton, triton.InferenceServerClient(address)


def _rest_predict(address: str, image: np.ndarray) -> None:
    body = json.dumps({"instances": image.tolist()}).encode()
    request = urllib.request.Request(f"http://{address}/v1/models/digits:predict", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _events(path, count: int, timeout: float = 20.0) -> list[dict]:
    """The log's events once `count` have been written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{len(lines)} events in {path}, expected {count}")


def _metric(server, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    found = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


@pytest.fixture(scope="module")
def logged(exported_repo, tmp_path_factory):
    """A server logging every request and writing an access log, after N requests over the three protocols."""
    folder = tmp_path_factory.mktemp("logs")
    server = start_server("--repository", exported_repo, "--model", "digits", "--payload-log-rate", "1",
                          "--payload-log-file", folder / "payload.jsonl", "--access-log", folder / "access.jsonl")
    sent, traces = [], {}
    triton, client = _kserve_client(server.grpc)
    for i in range(N):
        image = _image(i, rows=1 + i % 3)
        if i % 3 == 0:
            trace_id = secrets.token_hex(16)
            traces[i] = trace_id
            _tfs_predict(server.grpc, image, f"00-{trace_id}-{secrets.token_hex(8)}-01")
        elif i % 3 == 1:
            tensor = triton.InferInput("image", list(image.shape), "FP32")
            tensor.set_data_from_numpy(image)
            client.infer("digits", [tensor])
        else:
            _rest_predict(server.rest, image)
        sent.append(image)
    client.close()
    yield server, folder, sent, traces
    assert server.stop() == 0


def test_every_request_is_logged_with_its_answer_exactly(logged):
    _, folder, sent, traces = logged
    events = _events(folder / "payload.jsonl", 2 * N)
    requests = [e for e in events if e["type"] == "org.kubeflow.serving.inference.request"]
    responses = {e["id"]: e for e in events if e["type"] == "org.kubeflow.serving.inference.response"}
    assert len(requests) == len(responses) == N
    from kdeploy.wire.payload_log import ndarray_from_tensor_json

    by_time = sorted(requests, key=lambda e: e["time"])
    for index, (event, image) in enumerate(zip(by_time, sent)):
        assert event["specversion"] == "1.0" and event["inferenceservicename"] == "digits"
        assert event["modelversion"] == "1"
        assert event["protocol"] == ("tfserving-grpc", "kserve-grpc", "tfserving-rest")[index % 3]
        (tensor,) = event["data"]["inputs"]
        assert tensor["datatype"] == "FP32" and tensor["shape"] == list(image.shape)
        np.testing.assert_array_equal(ndarray_from_tensor_json(tensor), image)  # bit for bit
        answer = responses[event["id"]]["data"]
        assert answer["model_name"] == "digits" and answer["outputs"][0]["shape"] == [image.shape[0], 10]
        if index in traces:  # the client's trace, in CloudEvents' distributed tracing extension
            assert event["traceparent"].split("-")[1] == traces[index]
        else:
            assert "traceparent" not in event


def test_the_log_replays_through_verify_with_the_same_answers(logged, exported_repo, kdeploy, tmp_path):
    _, folder, sent, _ = logged
    _events(folder / "payload.jsonl", 2 * N)
    result = kdeploy("verify", exported_repo / "digits", "--data", folder / "payload.jsonl", "--report", tmp_path)
    assert result.code == 0, result.out + result.err
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["samples"] == sum(image.shape[0] for image in sent)
    assert f"{N} logged requests" in report["data_source"]
    formats = {f["format"]: f for f in report["formats"]}
    assert formats["logged"]["passed"]  # what the server answered = what the Keras model answers
    assert {"onnx", "tflite"} <= set(formats)


def test_the_log_replays_through_verify_against_the_server(logged, exported_repo, kdeploy, tmp_path):
    server, folder, _, _ = logged
    _events(folder / "payload.jsonl", 2 * N)
    result = kdeploy("verify", exported_repo / "digits", "--data", folder, "--endpoint", server.grpc,
                     "--protocol", "kserve-grpc", "--report", tmp_path)
    assert result.code == 0, result.out + result.err
    formats = {f["format"] for f in json.loads((tmp_path / "parity.json").read_text())["formats"]}
    assert formats == {"kserve-grpc", "logged"}


def test_the_log_replays_through_loadtest(logged, exported_repo, kdeploy, tmp_path):
    server, folder, _, _ = logged
    log = folder / "payload.jsonl"
    _events(log, 2 * N)
    result = kdeploy("loadtest", "--target", server.grpc, "--protocol", "kserve-grpc", "--model", "digits",
                     "--repository", exported_repo, "--data", log, "--users", 2, "--duration", "2s",
                     "--out", tmp_path)
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0


def test_the_access_log_has_one_line_per_request(logged):
    _, folder, _, traces = logged
    lines = _events(folder / "access.jsonl", N)
    inference = [line for line in lines if line["model"] == "digits"]
    assert len(inference) >= N
    by_protocol = {line["protocol"]: line for line in inference}
    assert set(by_protocol) >= {"tfserving-grpc", "kserve-grpc", "tfserving-rest"}
    grpc_line = by_protocol["kserve-grpc"]
    assert grpc_line["operation"] == "inference.GRPCInferenceService/ModelInfer"
    assert grpc_line["status"] == "OK" and grpc_line["version"] == "1"
    assert grpc_line["peer"].startswith("ipv4:127.0.0.1:") or "127.0.0.1" in grpc_line["peer"]
    assert grpc_line["request_bytes"] > 256 and grpc_line["response_bytes"] > 40  # 64 floats in, 10 out
    rest_line = by_protocol["tfserving-rest"]
    assert rest_line["status"] == 200 and rest_line["version"] == "1"  # the version that answered
    assert rest_line["operation"] == "POST /v1/models/{model}:predict"
    assert {line["trace_id"] for line in inference} >= set(traces.values())
    assert all(line["latency_ms"] > 0 and line["time"].endswith("Z") for line in inference)


class SilentSink:
    """An HTTP endpoint that accepts connections and never answers: a log collector that hangs."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._socket.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self._held.append(self._socket.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self._socket.close()


def test_a_sink_that_blocks_drops_and_counts_instead_of_slowing_requests(exported_repo):
    sink = SilentSink()
    server = start_server("--repository", exported_repo, "--model", "digits", "--payload-log-rate", "1",
                          "--payload-log-url", sink.url, "--log-queue-size", "4")
    try:
        triton, client = _kserve_client(server.grpc)
        tensor = triton.InferInput("image", [1, 8, 8, 1], "FP32")
        tensor.set_data_from_numpy(_image(0))
        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            client.infer("digits", [tensor])
            latencies.append(time.perf_counter() - started)
        client.close()
        # The sink holds the writer for its 5 s timeout per post, so a request that waited for the writer would take
        # that long; none comes near it (4 s leaves room for a busy machine's hiccups, not for a 5 s wait).
        assert max(latencies) < 4.0, max(latencies)
        dropped = _metric(server, "kdeploy_log_records_dropped_total", log="payload", reason="queue_full")
        assert 200 - 4 - 5 <= dropped <= 200  # all but what the queue and the blocked writer hold
    finally:
        server.stop()
        sink.close()

"""Traces from the real server to a real OTLP receiver: the trace service of `opentelemetry-proto`, run here on a
free loopback port, receiving what the server's OTLP gRPC exporter sends. Each protocol is called with the official
client and a W3C `traceparent`; the spans must continue that trace, with the request span as the parent of the
queue, batch and run spans."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import start_server

pytestmark = pytest.mark.slow

KSERVE_INFER = "inference.GRPCInferenceService/ModelInfer"
TFS_PREDICT = "tensorflow.serving.PredictionService/Predict"
REST_PREDICT = "POST /v1/models/{model}:predict"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every span it is sent, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the OTLP service's method name
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, count: int, timeout: float = 20.0) -> list:
        """The spans of one trace, once at least `count` have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [span for _, span in self.spans if span.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{[s.name for s in found]} of trace {trace_id} arrived, expected {count} spans")


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    yield receiver
    server.stop(0)


def _otel_env(receiver: Receiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "kdeploy-test", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}


@pytest.fixture(scope="module")
def batching_server(exported_repo, receiver):
    proc = start_server("--repository", exported_repo, "--model", "digits", "--enable-batching",
                        env=_otel_env(receiver))
    yield proc
    assert proc.stop() == 0


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _image(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(0).random((rows, 8, 8, 1), dtype=np.float32)


def _tfs_predict(address: str, traceparent: str | None) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(_image()))
    metadata = (("traceparent", traceparent),) if traceparent else None
    with grpc.insecure_channel(address) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30, metadata=metadata)


def _kserve_infer(address: str, traceparent: str) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("image", [1, 8, 8, 1], "FP32")
    tensor.set_data_from_numpy(_image())
    client.infer("digits", [tensor], headers={"traceparent": traceparent})
    client.close()


def _rest_predict(address: str, traceparent: str) -> None:
    body = json.dumps({"instances": _image().tolist()}).encode()
    request = urllib.request.Request(f"http://{address}/v1/models/digits:predict", data=body,
                                     headers={"traceparent": traceparent, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _by_name(spans: list) -> dict[str, object]:
    names = [s.name for s in spans]
    assert len(set(names)) == len(names), names
    return {s.name: s for s in spans}


def _attributes(span) -> dict[str, object]:
    def value(v):
        return v.string_value or v.int_value or v.bool_value

    return {a.key: value(a.value) for a in span.attributes}


@pytest.mark.parametrize(("protocol", "operation", "send"), [
    ("tfserving-grpc", TFS_PREDICT, lambda server, tp: _tfs_predict(server.grpc, tp)),
    ("kserve-grpc", KSERVE_INFER, lambda server, tp: _kserve_infer(server.grpc, tp)),
    ("tfserving-rest", REST_PREDICT, lambda server, tp: _rest_predict(server.rest, tp)),
])
def test_a_request_continues_the_clients_trace_with_queue_batch_and_run_spans(batching_server, receiver, protocol,
                                                                              operation, send):
    traceparent, trace_id, client_span = _traceparent()
    send(batching_server, traceparent)
    spans = _by_name(receiver.trace(trace_id, 4))
    assert set(spans) == {operation, "kdeploy.queue", "kdeploy.batch", "kdeploy.run"}
    request = spans[operation]
    assert request.parent_span_id.hex() == client_span
    assert request.kind == request.SPAN_KIND_SERVER
    attributes = _attributes(request)
    assert attributes["kdeploy.protocol"] == protocol
    assert attributes["kdeploy.model"] == "digits"
    assert attributes["kdeploy.model_version"] == 1
    assert spans["kdeploy.queue"].parent_span_id == request.span_id
    assert spans["kdeploy.batch"].parent_span_id == request.span_id
    assert spans["kdeploy.run"].parent_span_id == spans["kdeploy.batch"].span_id
    assert _attributes(spans["kdeploy.batch"])["kdeploy.batch.rows"] >= 1
    # Children lie within the request, in order: queued, then batched, the run inside the batch.
    assert request.start_time_unix_nano <= spans["kdeploy.queue"].start_time_unix_nano
    assert spans["kdeploy.queue"].end_time_unix_nano <= spans["kdeploy.batch"].start_time_unix_nano + 1
    assert spans["kdeploy.batch"].start_time_unix_nano <= spans["kdeploy.run"].start_time_unix_nano
    assert spans["kdeploy.run"].end_time_unix_nano <= request.end_time_unix_nano


def test_the_resource_comes_from_the_otel_variables(batching_server, receiver):
    traceparent, trace_id, _ = _traceparent()
    _kserve_infer(batching_server.grpc, traceparent)
    receiver.trace(trace_id, 4)
    resources = [resource for resource, span in receiver.spans if span.trace_id.hex() == trace_id]
    assert resources[0]["service.name"] == "kdeploy-test"
    assert resources[0]["deployment.environment"] == "ci"


def test_a_request_without_traceparent_starts_a_trace_of_its_own(batching_server, receiver):
    before = {span.span_id for _, span in receiver.spans}
    _tfs_predict(batching_server.grpc, None)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        roots = [s for _, s in receiver.spans if s.span_id not in before and s.name == TFS_PREDICT]
        if roots:
            break
        time.sleep(0.05)
    (root,) = roots
    assert root.parent_span_id == b""
    children = receiver.trace(root.trace_id.hex(), 4)
    assert {s.name for s in children} == {TFS_PREDICT, "kdeploy.queue", "kdeploy.batch", "kdeploy.run"}


def test_an_unbatched_model_gets_a_run_span_under_the_request_and_errors_are_marked(exported_repo, receiver):
    proc = start_server("--repository", exported_repo, "--model", "digits", env=_otel_env(receiver))
    try:
        traceparent, trace_id, _ = _traceparent()
        _kserve_infer(proc.grpc, traceparent)
        spans = _by_name(receiver.trace(trace_id, 2))
        assert set(spans) == {KSERVE_INFER, "kdeploy.run"}
        assert spans["kdeploy.run"].parent_span_id == spans[KSERVE_INFER].span_id
        # A refused request: its span says so, with the gRPC status (a client error is not a server error).
        traceparent, trace_id, _ = _traceparent()
        request = urllib.request.Request(f"http://{proc.rest}/v1/models/nope:predict", data=b"{}",
                                         headers={"traceparent": traceparent})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 404
        (span,) = receiver.trace(trace_id, 1)
        assert span.name == REST_PREDICT
        assert _attributes(span)["http.response.status_code"] == 404
        assert span.status.code != span.status.STATUS_CODE_ERROR
    finally:
        assert proc.stop() == 0

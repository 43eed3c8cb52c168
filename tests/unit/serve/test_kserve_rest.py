"""KServe v2 over HTTP (`KServeRestApi.handle`) over fake backends: routes, JSON and binary tensors, errors, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import numpy as np
import pytest

from kdeploy.serve.adapters.kserve_rest import KServeRestApi, RestReply, is_kserve_path
from kdeploy.serve.adapters.kserve_v2 import KServeV2Adapter
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.serve.errors import INTERNAL_MESSAGE
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.serve.service import InferenceService
from kdeploy.wire.kserve_rest import infer_request_body, outputs_from_response
from kdeploy.wire.protos.messages import load_protos
from tests.unit.serve.fakes import ONE_OUTPUT, TWO_INPUTS, FakeLoader, write_version

ROWS = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], np.float32)


@dataclass
class Api:
    api: KServeRestApi
    loader: FakeLoader
    metrics: ServerMetrics

    def call(self, method: str, path: str, body: bytes | None = None, header: str | None = None) -> RestReply:
        return asyncio.run(self.api.handle(method, path, body, header))

    def get(self, path: str) -> tuple[int, dict]:
        reply = self.call("GET", path)
        assert reply.header_length is None
        return reply.status, json.loads(reply.body)

    def infer(self, path: str, request: dict) -> tuple[int, dict]:
        reply = self.call("POST", path, json.dumps(request).encode())
        return reply.status, json.loads(reply.body)

    def requests(self, status: str, model: str = "m", version: str = "2") -> float | None:
        labels = {"model": model, "version": version, "protocol": "kserve-rest", "status": status}
        return self.metrics.registry.get_sample_value("kdeploy_requests_total", labels)


@pytest.fixture
def api(tmp_path):
    """Models `m` (versions 1 and 2), `one` (one output), `two` (two inputs), `broken` (fails to load)."""
    for version in (1, 2):
        write_version(tmp_path, "m", version)
    write_version(tmp_path, "one", 1, ONE_OUTPUT)
    write_version(tmp_path, "two", 1, TWO_INPUTS)
    write_version(tmp_path, "broken", 1)
    loader, metrics = FakeLoader(), ServerMetrics()
    loader.failures["broken", 1] = "cannot allocate"
    sources = [ModelSource("broken", tmp_path / "broken"), ModelSource("m", tmp_path / "m", VersionPolicy.parse("all")),
               ModelSource("one", tmp_path / "one"), ModelSource("two", tmp_path / "two")]
    models = ModelManager(sources, "onnx", loader, metrics=metrics)
    models.load_all()
    service = InferenceService(models, metrics)
    protos = load_protos()
    known = frozenset(models.model_names)
    yield Api(KServeRestApi(service, KServeV2Adapter(service, protos, "onnx"), metrics, known), loader, metrics)
    models.close()


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def test_paths_that_belong_to_kserve():
    assert all(map(is_kserve_path, ["/v2", "/v2/", "/v2/health/live", "/v2/models/m/infer", "/v1/models",
                                    "/v1/models/", "/v2?x=1"]))
    assert not any(map(is_kserve_path, ["/v1/models/m", "/v1/models/m:predict", "/v20", "/metrics", "/"]))
    assert not is_kserve_path("/v1/models", "POST")  # TF Serving's: "Malformed request"


def test_server_metadata_lists_the_binary_extension(api):
    code, body = api.get("/v2")
    assert code == 200 and body["name"] == "kdeploy" and body["version"]
    assert body["extensions"] == ["binary_tensor_data", "model_configuration", "statistics"]


def test_health(api):
    assert api.get("/v2/health/live") == (200, {"live": True})
    # `broken` has no available version, so the server as a whole is not ready
    code, body = api.get("/v2/health/ready")
    assert code == 503 and "waiting for broken" in body["error"]


def test_server_ready_when_every_model_is_and_503_once_draining(tmp_path):
    write_version(tmp_path, "m", 1)
    models = ModelManager([ModelSource("m", tmp_path / "m")], "onnx", FakeLoader())
    models.load_all()
    service = InferenceService(models)
    api = Api(KServeRestApi(service, KServeV2Adapter(service, load_protos(), "onnx")), FakeLoader(),
              ServerMetrics())
    assert api.get("/v2/health/ready") == (200, {"ready": True})
    api.api.service.draining = True
    code, body = api.get("/v2/health/ready")
    assert code == 503 and body == {"error": "the server is shutting down"}
    assert api.get("/v2/health/live") == (200, {"live": True})
    models.close()


def test_model_readiness_with_and_without_version(api):
    assert api.get("/v2/models/m/ready") == (200, {"name": "m", "ready": True})
    assert api.get("/v2/models/m/versions/1/ready") == (200, {"name": "m", "ready": True})
    assert api.get("/v2/models/m/versions/9/ready")[0] == 404
    assert api.get("/v2/models/nope/ready")[0] == 404
    code, body = api.get("/v2/models/broken/ready")
    assert code == 503 and "model 'broken' is not ready (versions 1: END)" in body["error"]


def test_model_metadata_with_and_without_version(api):
    code, body = api.get("/v2/models/two")
    assert code == 200
    assert body == {"name": "two", "versions": ["1"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                               {"name": "b", "datatype": "INT32", "shape": [-1, 2]}],
                    "outputs": [{"name": "s", "datatype": "FP32", "shape": [-1, 2]},
                                {"name": "t", "datatype": "INT32", "shape": [-1, 2]}]}
    assert api.get("/v2/models/m")[1]["versions"] == ["1", "2"]
    assert api.get("/v2/models/m/versions/1")[0] == 200


def test_model_lists_config_and_statistics(api):
    assert api.get("/v2/models") == (200, {"models": ["broken", "m", "one", "two"]})
    assert api.get("/v1/models") == (200, {"models": ["broken", "m", "one", "two"]})
    code, config = api.get("/v2/models/two/config")
    assert code == 200 and config["name"] == "two" and config["platform"] == "onnxruntime_onnx"
    b = config["input"][1]
    assert (b["name"], b["data_type"], b["dims"]) == ("b", "TYPE_INT32", [2])  # 64-bit numbers, not strings
    assert config["max_batch_size"] > 0
    api.infer("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)]})
    code, stats = api.get("/v2/models/m/versions/2/stats")
    assert code == 200 and stats["model_stats"][0]["inference_count"] == 2
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] == 1
    assert stats["model_stats"][0]["inference_stats"]["fail"] == {"count": 0, "ns": 0}  # as Triton: zeros written
    assert {s["name"] for s in api.get("/v2/models/stats")[1]["model_stats"]} == {"broken", "m", "one", "two"}


def test_infer_json_with_id_every_output_and_the_latest_version(api):
    code, body = api.infer("/v2/models/m/infer", {"id": "42", "inputs": [tensor("x", ROWS)]})
    assert code == 200
    assert body == {"model_name": "m", "model_version": "2", "id": "42", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": (2 * ROWS + 2).ravel().tolist()},
        {"name": "z", "datatype": "FP32", "shape": [2, 3], "data": (3 * ROWS + 2).ravel().tolist()}]}


def test_infer_a_version_with_nested_data_and_an_outputs_filter(api):
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": ROWS.tolist()}],
               "outputs": [{"name": "z"}]}
    code, body = api.infer("/v2/models/m/versions/1/infer", request)
    assert code == 200 and "id" not in body and body["model_version"] == "1"
    assert [o["name"] for o in body["outputs"]] == ["z"]
    assert body["outputs"][0]["data"] == (3 * ROWS + 1).ravel().tolist()


def test_infer_binary_inputs_and_outputs(api):
    a, b = np.array([[1.0, 2.0]], np.float32), np.array([[5, 6]], np.int32)
    body, length = infer_request_body({"a": a, "b": b}, binary=True, request_id="7")
    reply = api.call("POST", "/v2/models/two/infer", body, str(length))
    assert reply.status == 200 and reply.header_length is not None
    header = json.loads(reply.body[:reply.header_length])
    assert header["id"] == "7" and [o["parameters"] for o in header["outputs"]] == [{"binary_data_size": 8}] * 2
    outputs = outputs_from_response(reply.body, reply.header_length)
    np.testing.assert_array_equal(outputs["s"], 2 * a + 1)
    np.testing.assert_array_equal(outputs["t"], 3 * b + 1)
    assert outputs["t"].dtype == np.int32


def test_binary_data_on_one_output_overrides_binary_data_output(api):
    request = {"inputs": [tensor("x", ROWS)], "parameters": {"binary_data_output": True},
               "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}]}
    reply = api.call("POST", "/v2/models/m/infer", json.dumps(request).encode())
    header = json.loads(reply.body[:reply.header_length])
    assert "data" in header["outputs"][0] and header["outputs"][1]["parameters"] == {"binary_data_size": 24}
    np.testing.assert_array_equal(outputs_from_response(reply.body, reply.header_length)["z"], 3 * ROWS + 2)


def test_a_raw_binary_request_is_one_row_of_the_only_input(api):
    row = np.array([1.0, 2.0, 3.0], np.float32)
    reply = api.call("POST", "/v2/models/one/infer", row.tobytes(), "0")
    assert reply.status == 200 and reply.header_length is not None  # outputs come back binary
    np.testing.assert_array_equal(outputs_from_response(reply.body, reply.header_length)["y"], [2 * row + 1])
    reply = api.call("POST", "/v2/models/two/infer", row.tobytes(), "0")
    assert reply.status == 400 and "a model with one input" in json.loads(reply.body)["error"]


@pytest.mark.parametrize("path, body, header, code, words", [
    ("/v2/models/m/infer", b"{not json", None, 400, "the inference request is not JSON"),
    ("/v2/models/m/infer", b"[1]", None, 400, "must be a JSON object, got list"),
    ("/v2/models/m/infer", b"{}", None, 400, "needs 'inputs', a list of tensors"),
    ("/v2/models/m/infer", b'{"inputs": []}', "99", 400,
     "Inference-Header-Content-Length is 99, but the body has 14 bytes"),
    ("/v2/models/m/infer", b'{"inputs": []}', "x", 400, "Inference-Header-Content-Length must be a number"),
    ("/v2/models/m/infer", (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],'
                            b'"parameters":{"binary_data_size":12}}]}', b"\0" * 4), "auto", 400,
     "input 'x': binary_data_size 12 runs past the end of the body (4 bytes of binary data left)"),
    ("/v2/models/m/infer", (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}', b"\0\0"),
     "auto", 400, "2 bytes of binary data after the inputs"),
    ("/v2/models/m/infer", (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],'
                            b'"parameters":{"binary_data_size":8}}]}', b"\0" * 8), "auto", 400,
     "input 'x': the binary data has 8 bytes; shape [1, 3] of FP32 needs 12"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]}, None,
     400, "input 'x': 'data' has 2 values; shape [1, 3] needs 3"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}, None,
     400, "input 'x': expected shape [-1, 3], got [3]"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]},
     None, 400, "input 'x': expected datatype FP32, got INT64"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": ["a", "b", "c"]}]},
     None, 400, "FP32 'data' must hold numbers, got strings"),
    ("/v2/models/m/infer", {"inputs": [{"name": "w", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
     None, 400, "unknown input 'w'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3]}]}, None, 400,
     "input 'x' has neither 'data' nor parameters.binary_data_size"),
    ("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)], "outputs": [{"name": "q"}]}, None, 400,
     "unknown output 'q'"),
    ("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)], "id": 5}, None, 400, "'id' must be a string"),
    ("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)], "parameters": {"binary_data_output": "yes"}}, None, 400,
     "parameter 'binary_data_output' must be true or false"),
    ("/v2/models/nope/infer", {"inputs": [tensor("x", ROWS)]}, None, 404, "model 'nope' is not served here"),
    ("/v2/models/m/versions/9/infer", {"inputs": [tensor("x", ROWS)]}, None, 404, "model 'm' has no version 9"),
    ("/v2/models/m/versions/x/infer", {"inputs": [tensor("x", ROWS)]}, None, 400, "version must be a positive"),
    ("/v2/models/broken/infer", {"inputs": [tensor("x", ROWS)]}, None, 503, "model 'broken' has no available version"),
    ("/v2/models/two/infer", {"inputs": [tensor("a", ROWS[:, :2])]}, None, 400, "missing input 'b'"),
    ("/v2/nothing", None, None, 404, "no such endpoint '/v2/nothing'"),
    ("/v2/models/nope", None, None, 404, "model 'nope' is not served here"),
    ("/v2/models/m/config", {}, None, 400, "/v2/models/m/config takes GET, not POST"),
])
def test_errors_have_their_status_and_say_what_is_wrong(api, path, body, header, code, words):
    if isinstance(body, tuple):  # a JSON part and binary data after it
        data, header = b"".join(body), str(len(body[0]))
    else:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    reply = api.call("POST" if body is not None else "GET", path, data, header)
    answer = json.loads(reply.body)
    assert reply.status == code and list(answer) == ["error"] and words in answer["error"], answer


def test_infer_takes_post(api):
    reply = api.call("GET", "/v2/models/m/infer")
    assert reply.status == 400 and "takes POST" in json.loads(reply.body)["error"]


def test_an_unexpected_error_is_500_without_internals(api, monkeypatch, caplog):
    monkeypatch.setattr(api.loader.backend(2), "infer", lambda feed: {"y": feed["x"]})  # no `z`: a KeyError
    with caplog.at_level(logging.ERROR):
        assert api.infer("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)]}) == (500, {"error": INTERNAL_MESSAGE})
    assert "KServe REST POST /v2/models/m/infer failed" in caplog.text and "KeyError" in caplog.text


def test_inference_is_counted_by_model_version_and_status(api):
    api.infer("/v2/models/m/infer", {"inputs": [tensor("x", ROWS)]})
    api.infer("/v2/models/m/versions/1/infer", {"inputs": [tensor("x", ROWS)]})
    api.infer("/v2/models/m/infer", {"inputs": [tensor("x", ROWS[:, :2])]})
    api.infer("/v2/models/nope/infer", {"inputs": [tensor("x", ROWS)]})
    api.get("/v2/models/m")  # metadata is not inference
    assert api.requests("OK") == 1 and api.requests("OK", version="1") == 1
    assert api.requests("INVALID_ARGUMENT") == 1
    assert api.requests("NOT_FOUND", model="_unknown", version="") == 1
    latency = api.metrics.registry.get_sample_value("kdeploy_request_latency_seconds_count",
                                                    {"model": "m", "protocol": "kserve-rest"})
    assert latency == 3

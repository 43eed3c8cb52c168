"""TF Serving's REST API (`RestApi.handle`) over fake backends: routes, both request formats, errors, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import pytest

from kdeploy.serve.adapters.rest import RestApi
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.serve.errors import INTERNAL_MESSAGE
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ErrorKind
from tests.unit.serve.fakes import ONE_OUTPUT, TWO_INPUTS, FakeLoader, write_version

ROWS = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@dataclass
class Rest:
    api: RestApi
    loader: FakeLoader
    metrics: ServerMetrics

    def get(self, path: str) -> tuple[int, dict]:
        return asyncio.run(self.api.handle("GET", path, None))

    def post(self, path: str, payload: object) -> tuple[int, dict]:
        return asyncio.run(self.api.handle("POST", path, json.dumps(payload).encode()))

    def requests(self, status: str, model: str = "m", version: str = "") -> float | None:
        labels = {"model": model, "version": version, "protocol": "tfserving-rest", "status": status}
        return self.metrics.registry.get_sample_value("kdeploy_requests_total", labels)


@pytest.fixture
def rest(tmp_path):
    """Models `m` (versions 1 and 2, label `stable` -> 1), `one` (one output), `two` (two inputs) and `broken`
    (its only version fails to load)."""
    for version in (1, 2):
        write_version(tmp_path, "m", version)
    write_version(tmp_path, "one", 1, ONE_OUTPUT)
    write_version(tmp_path, "two", 1, TWO_INPUTS)
    write_version(tmp_path, "broken", 1)
    loader, metrics = FakeLoader(), ServerMetrics()
    loader.failures["broken", 1] = "cannot allocate"
    sources = [ModelSource("broken", tmp_path / "broken"),
               ModelSource("m", tmp_path / "m", VersionPolicy.parse("all"), {"stable": 1}),
               ModelSource("one", tmp_path / "one"), ModelSource("two", tmp_path / "two")]
    models = ModelManager(sources, "onnx", loader, metrics=metrics)
    models.load_all()
    yield Rest(RestApi(InferenceService(models, metrics), 1 << 20, metrics, frozenset(models.model_names)),
               loader, metrics)
    models.close()


def status(version: int, state: str = "AVAILABLE", error: str = "") -> dict:
    return {"version": str(version), "state": state,
            "status": {"error_code": "UNAVAILABLE" if error else "OK", "error_message": error}}


def test_model_status_by_model_version_and_label(rest):
    assert rest.get("/v1/models/m") == (200, {"model_version_status": [status(1), status(2)]})
    assert rest.get("/v1/models/m/versions/2") == (200, {"model_version_status": [status(2)]})
    assert rest.get("/v1/models/m/labels/stable") == (200, {"model_version_status": [status(1)]})
    assert rest.get("/v1/models/broken") == (200, {"model_version_status": [status(1, "END", "cannot allocate")]})


def test_metadata_is_tf_servings_signature_def(rest):
    code, body = rest.get("/v1/models/two/metadata")
    assert code == 200 and body["model_spec"] == {"name": "two", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["b"] == {"dtype": "DT_INT32", "name": "serving_default_b:0", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}], "unknown_rank": False}}
    assert {k: v["name"] for k, v in signature["outputs"].items()} == {
        "s": "StatefulPartitionedCall:0", "t": "StatefulPartitionedCall:1"}
    assert rest.get("/v1/models/m/metadata")[1]["model_spec"]["version"] == "2"  # the latest
    assert rest.get("/v1/models/m/versions/1/metadata")[1]["model_spec"]["version"] == "1"


@pytest.mark.parametrize("path, version", [
    ("/v1/models/m:predict", 2), ("/v1/models/m/versions/1:predict", 1), ("/v1/models/m/labels/stable:predict", 1),
])
def test_predict_rows_with_two_outputs_by_version_and_label(rest, path, version):
    code, body = rest.post(path, {"instances": ROWS})
    assert code == 200
    assert body == {"predictions": [{"y": [2 * v + version for v in row], "z": [3 * v + version for v in row]}
                                    for row in ROWS]}


def test_predict_columns_with_two_outputs(rest):
    code, body = rest.post("/v1/models/m:predict", {"inputs": ROWS, "signature_name": "serving_default"})
    assert code == 200
    assert body == {"outputs": {"y": [[2 * v + 2 for v in row] for row in ROWS],
                                "z": [[3 * v + 2 for v in row] for row in ROWS]}}


def test_one_output_is_a_plain_list_in_both_formats(rest):
    expected = [[2 * v + 1 for v in row] for row in ROWS]
    assert rest.post("/v1/models/one:predict", {"instances": ROWS}) == (200, {"predictions": expected})
    assert rest.post("/v1/models/one:predict", {"inputs": ROWS}) == (200, {"outputs": expected})
    assert rest.post("/v1/models/one:predict", {"instances": [{"x": row} for row in ROWS]}) == (
        200, {"predictions": expected})


def test_two_inputs_by_name_in_both_formats(rest):
    a, b = [[1.0, 2.0], [3.0, 4.0]], [[5, 6], [7, 8]]
    s, t = [[3.0, 5.0], [7.0, 9.0]], [[16, 19], [22, 25]]
    code, body = rest.post("/v1/models/two:predict", {"instances": [{"a": a[i], "b": b[i]} for i in range(2)]})
    assert (code, body) == (200, {"predictions": [{"s": s[0], "t": t[0]}, {"s": s[1], "t": t[1]}]})
    assert rest.post("/v1/models/two:predict", {"inputs": {"b": b, "a": a}}) == (200, {"outputs": {"s": s, "t": t}})
    assert all(isinstance(v, int) for row in body["predictions"] for v in row["t"])


@pytest.mark.parametrize("method, path, body, code, words", [
    ("GET", "/v1/models/nope", None, 404, "model 'nope' is not served here (models: broken, m, one, two)"),
    ("GET", "/v1/models/nope", None, 404, "Servable not found for request: Latest(nope)"),
    ("GET", "/v1/models/m/versions/9", None, 404, "model 'm' has no version 9 (versions: [1, 2])"),
    # TF Serving: an unknown label is INVALID_ARGUMENT (server_core.cc), not NOT_FOUND.
    ("GET", "/v1/models/m/labels/beta", None, 400, "Unrecognized servable version label: beta"),
    ("GET", "/v2/models/m", None, 404, "no such endpoint '/v2/models/m'"),
    ("POST", "/v1/models/nope:predict", {"instances": ROWS}, 404, "model 'nope' is not served here"),
    ("POST", "/v1/models/m/versions/9:predict", {"instances": ROWS}, 404, "model 'm' has no version 9"),
    # TF Serving's words for requests its routes do not take (http_rest_api_handler_test.cc).
    ("GET", "/v1/models/m:predict", None, 400, "Malformed request: GET /v1/models/m:predict"),
    ("POST", "/v1/models/m", {}, 400, "Malformed request: POST /v1/models/m"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("POST", f"/v1/models/m/versions/{2**64 - 1}:regress", {}, 400, "Failed to convert version"),
    ("POST", "/v1/models/m:predict", b"{not json", 400, "JSON Parse error: "),
    ("POST", "/v1/models/m:predict", None, 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/m:predict", b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("POST", "/v1/models/m:predict", [1], 400, "the request body must be a JSON object"),
    ("POST", "/v1/models/m:predict", {"instances": ROWS, "inputs": ROWS}, 400, "exactly one of 'instances'"),
    ("POST", "/v1/models/m:predict", {"rows": ROWS}, 400, "exactly one of 'instances'"),
    ("POST", "/v1/models/m:predict", {"instances": []}, 400, "'instances' must be a non-empty list of rows"),
    ("POST", "/v1/models/m:predict", {"instances": [[1, 2]]}, 400, "input 'x': expected shape [-1, 3], got [1, 2]"),
    ("POST", "/v1/models/m:predict", {"inputs": [1, 2, 3]}, 400, "input 'x': expected shape [-1, 3], got [3]"),
    ("POST", "/v1/models/m:predict", {"instances": [["a", "b", "c"]]}, 400,
     "input 'x': a JSON value is not of expected type: float"),
    ("POST", "/v1/models/m:predict", {"instances": [{"x": ROWS[0]}, {"w": ROWS[1]}]}, 400,
     "every instance must name the same inputs"),
    ("POST", "/v1/models/m:predict", {"instances": [{"w": ROWS[0]}]}, 400, "unknown input 'w'; the model's inputs"),
    ("POST", "/v1/models/m:predict", {"instances": ROWS, "signature_name": "other"}, 400,
     "unknown signature 'other'"),
    ("POST", "/v1/models/m:predict", {"instances": ROWS, "signature_name": 3}, 400,
     "'signature_name' key must be a string value."),
    ("GET", "/v1/models/m:classify", None, 400, "Malformed request"),
    ("POST", "/v1/models/m:classify", {"examples": [{"x": 1.0}]}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: "
     "tensorflow/serving/predict"),
    ("POST", "/v1/models/m/labels/stable:regress", {"examples": [{"x": 1.0}]}, 400,
     "Expected regression signature method_name to be tensorflow/serving/regress"),
    ("POST", "/v1/models/nope:classify", {"examples": [{"x": 1.0}]}, 404, "model 'nope' is not served here"),
    ("POST", "/v1/models/two:predict", {"instances": [[1, 2]]}, 400,
     "the model has inputs ['a', 'b']: each instance must be an object naming them"),
    ("POST", "/v1/models/two:predict", {"inputs": [[1, 2]]}, 400, "'inputs' must be an object naming them"),
    ("POST", "/v1/models/two:predict", {"inputs": {"a": [[1, 2]]}}, 400, "missing input 'b'"),
    ("POST", "/v1/models/broken:predict", {"instances": ROWS}, 503,
     "model 'broken' has no available version (version 1 is END: cannot allocate)"),
])
def test_errors_have_their_status_and_say_what_is_wrong(rest, method, path, body, code, words):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    answer_code, answer = asyncio.run(rest.api.handle(method, path, data))
    assert answer_code == code and list(answer) == ["error"] and words in answer["error"]


def test_a_runtime_failure_is_500_and_the_next_request_works(rest, caplog):
    rest.loader.backend(2).failing = True
    with caplog.at_level(logging.ERROR):
        answer = rest.post("/v1/models/m:predict", {"instances": ROWS})
    assert answer == (500, {"error": "model 'm' version 2 failed to run the request"})
    assert "segfault" in caplog.text and "segfault" not in answer[1]["error"]
    rest.loader.backend(2).failing = False
    assert rest.post("/v1/models/m:predict", {"instances": ROWS})[0] == 200


def test_an_unexpected_error_is_500_without_internals(rest, monkeypatch, caplog):
    monkeypatch.setattr(rest.loader.backend(2), "infer", lambda feed: {"y": feed["x"]})  # no `z`: a KeyError
    with caplog.at_level(logging.ERROR):
        assert rest.post("/v1/models/m:predict", {"instances": ROWS}) == (500, {"error": INTERNAL_MESSAGE})
    assert "REST POST /v1/models/m:predict failed" in caplog.text and "KeyError" in caplog.text


def test_predictions_are_counted_by_model_version_and_status(rest):
    rest.post("/v1/models/m:predict", {"instances": ROWS})
    rest.post("/v1/models/m/versions/1:predict", {"instances": ROWS})
    rest.post("/v1/models/m/labels/stable:predict", {"instances": ROWS})
    rest.post("/v1/models/m:predict", {"instances": [[1]]})
    rest.post("/v1/models/broken:predict", {"instances": ROWS})
    rest.post("/v1/models/nope:predict", {"instances": ROWS})
    rest.post("/v1/models/another-unknown:predict", {"instances": ROWS})
    rest.loader.backend(2).failing = True
    rest.post("/v1/models/m:predict", {"instances": ROWS})
    rest.get("/v1/models/m")  # status and metadata calls are not predictions
    rest.get("/v1/models/m/metadata")
    assert rest.requests("OK") == 2 and rest.requests("OK", version="1") == 1
    assert rest.requests("INVALID_ARGUMENT") == 1 and rest.requests("INTERNAL") == 1
    assert rest.requests("UNAVAILABLE", model="broken") == 1
    assert rest.requests("NOT_FOUND", model="_unknown") == 2  # unknown names share one label value
    total = sum(s.value for m in rest.metrics.registry.collect() if m.name == "kdeploy_requests"
                for s in m.samples if s.name == "kdeploy_requests_total")
    assert total == 8
    latency = {"model": "m", "protocol": "tfserving-rest"}
    assert rest.metrics.registry.get_sample_value("kdeploy_request_latency_seconds_count", latency) == 5


def test_classify_and_regress_are_counted_like_predictions(rest):
    rest.post("/v1/models/m:classify", {"examples": [{"x": 1.0}]})  # m predicts: 400
    rest.post("/v1/models/m/versions/2:regress", {"examples": [{"x": 1.0}]})
    rest.post("/v1/models/nope:classify", {"examples": [{"x": 1.0}]})
    assert rest.requests("INVALID_ARGUMENT") == 1 and rest.requests("INVALID_ARGUMENT", version="2") == 1
    assert rest.requests("NOT_FOUND", model="_unknown") == 1


def test_the_error_kinds_map_to_http_statuses():
    from kdeploy.serve.errors import HTTP_STATUS, HTTP_TO_GRPC_NAME

    assert {kind: HTTP_STATUS[kind] for kind in ErrorKind} == {
        ErrorKind.INVALID_INPUT: 400, ErrorKind.FAILED_PRECONDITION: 400, ErrorKind.NOT_FOUND: 404,
        ErrorKind.TOO_LARGE: 413,
        ErrorKind.UNAVAILABLE: 503, ErrorKind.DEADLINE: 504, ErrorKind.UNIMPLEMENTED: 501, ErrorKind.INTERNAL: 500}
    assert HTTP_TO_GRPC_NAME[413] == "RESOURCE_EXHAUSTED" and HTTP_TO_GRPC_NAME[200] == "OK"
    assert HTTP_TO_GRPC_NAME[400] == "INVALID_ARGUMENT"  # not FAILED_PRECONDITION, which shares 400

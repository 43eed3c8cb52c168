"""TF Serving's `http_rest_api_handler_test.cc`, ported to HTTP requests against `kdeploy serve`.

Upstream calls the REST handler in-process on `saved_model_half_plus_two_2_versions` (version 123 by a specific
version policy, label `Version_Label` on it); here the same requests go over HTTP to a server with the same
ModelServerConfig, and each check is upstream's: the status (InvalidArgument is HTTP 400, NotFound 404, as TF
Serving's HTTP server maps them), the message substring, the JSON answer and the Content-Type header.
Upstream loads TensorFlow's own `cc/saved_model/testdata/half_plus_two` as that model; its expected metadata
(`saved_model_half_plus_two_2_versions_metadata.json`) is TF Serving's copy, which these tests serve.
"""

from __future__ import annotations

import json

import pytest

from tests.tfserving.harness import TESTDATA, model_path, rest_call

pytestmark = pytest.mark.slow

MODEL = "saved_model_half_plus_two_2_versions"
VERSION = 123
LABEL = "Version_Label"
NONEXISTENT_LABEL = "Version_Nonexistent"


@pytest.fixture(scope="module")
def base_url(servers, tmp_path_factory):
    config = tmp_path_factory.mktemp("rest") / "models.config"
    config.write_text(f"""model_config_list {{
  config {{
    name: "{MODEL}"
    base_path: "{model_path(MODEL)}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: {VERSION} }} }}
    version_labels {{ key: "{LABEL}" value: {VERSION} }}
  }}
}}
""")
    return "http://" + servers.run_server(None, None, model_config_file=config).rest


def process(base_url: str, method: str, path: str, body: str = "") -> tuple[int, dict, dict]:
    """Upstream's `handler_.ProcessRequest`: (HTTP status, JSON answer, headers)."""
    status, headers, data = rest_call(base_url + path, method, body.encode() if method == "POST" else None)
    return status, json.loads(data), headers


def error_message(answer: dict) -> str:
    """Upstream's `GetJsonErrorMsg`: the `error` string of an error answer."""
    assert isinstance(answer.get("error"), str), answer
    return answer["error"]


@pytest.mark.parametrize("method, path, words", [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    pytest.param("GET", "/v1/models", "Missing model name", marks=pytest.mark.skip(
        reason="kdeploy answers GET /v1/models with KServe v1's model list (the one KServe v1 route TF Serving has "
               "no use for); TF Serving answers 400 'Missing model name'")),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_unsupported_api_calls(base_url, method, path, words):
    status, answer, _ = process(base_url, method, path)
    assert status == 400  # InvalidArgument
    assert words in error_message(answer)


def test_path_regex(base_url):
    """Upstream's kPathRegex test: `/v1/models` is the REST API's (answered by the handler: 400 for a POST here, as
    a GET is KServe's model list), `/statuspage` and `/index` are not (the HTTP server's 404)."""
    assert process(base_url, "POST", "/v1/models")[0] == 400
    for path in ("/statuspage", "/index"):
        assert process(base_url, "GET", path)[0] == 404


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{MODEL}99:predict"])
def test_predict_model_name_version_errors(base_url, path):
    assert process(base_url, "POST", path, '{ "instances": [1] }')[0] == 404  # NotFound


def test_predict_request_errors(base_url):
    path = f"/v1/models/{MODEL}:predict"
    status, answer, _ = process(base_url, "POST", path, "")
    assert status == 400 and "JSON Parse error: The document is empty" in error_message(answer)
    status, answer, _ = process(base_url, "POST", path, "instances = [1, 2]")
    assert status == 400 and "JSON Parse error: Invalid value" in error_message(answer)
    status, answer, _ = process(base_url, "POST", path, '{ "instances": ["x", "y"] }')
    assert status == 400 and "not of expected type: float" in error_message(answer)
    status, answer, _ = process(base_url, "POST", f"/v1/models/{MODEL}/labels/{NONEXISTENT_LABEL}:predict",
                                '{ "instances": ["x", "y"] }')
    assert status == 400 and "Unrecognized servable version label" in error_message(answer)
    status, answer, _ = process(base_url, "POST", path, '{ "signature_name": 100 }')
    assert status == 400 and "'signature_name' key must be a string value." in error_message(answer)


@pytest.mark.parametrize("path, body, expected", [
    (f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0],
                                                                                                 [3.5, 4.0]]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    (f"/v1/models/{MODEL}/labels/{LABEL}:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict",
     '{"signature_name": "serving_default", "instances": [3.0, 4.0]}', {"predictions": [3.5, 4.0]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict",
     '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', {"outputs": [3.5, 4.0]}),
    (f"/v1/models/{MODEL}:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
    (f"/v1/models/{MODEL}/labels/{LABEL}:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
    (f"/v1/models/{MODEL}:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }', {"results": [[["", 12]]]}),
    (f"/v1/models/{MODEL}/labels/{LABEL}:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }', {"results": [[["", 7]]]}),
], ids=["predict-latest", "predict-version", "predict-label", "predict-signature", "predict-columnar",
        "regress-latest", "regress-version", "regress-label", "classify-latest", "classify-label"])
def test_predict_regress_classify(base_url, path, body, expected):
    status, answer, headers = process(base_url, "POST", path, body)
    assert status == 200 and answer == expected
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/{VERSION}",
                                  f"/v1/models/{MODEL}/labels/{LABEL}"])
def test_get_status(base_url, path):
    status, answer, headers = process(base_url, "GET", path)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer == {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}


def test_get_model_metadata(base_url):
    status, answer, headers = process(base_url, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer == json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())

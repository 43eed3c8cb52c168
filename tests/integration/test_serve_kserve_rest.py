"""KServe v2 over HTTP against the real server, with the official client (`tritonclient.http`), binary tensors (its
default) and JSON, on FP32, INT32, INT64 and FP16 models; errors over the wire; metrics; and the drain."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest

from tests.bare_models import write_elementwise_onnx
from tests.clients import keras_outputs
from tests.conftest import start_server

pytestmark = pytest.mark.slow
FP32 = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, exported_repo):
    """digits, two and text (kdeploy's exports) and two bare ONNX models: `add64` (INT64 + 1) and `half` (FP16 * 2)."""
    root = tmp_path_factory.mktemp("kserve-rest")
    for name in ("digits", "two", "text"):
        shutil.copytree(exported_repo / name, root / name)
    write_elementwise_onnx(root / "add64" / "1" / "model.onnx", "INT64", "Add", 1)
    write_elementwise_onnx(root / "half" / "1" / "model.onnx", "FLOAT16", "Mul", 2)
    return root


@pytest.fixture(scope="module")
def server(repo):
    proc = start_server("--repository", repo)
    yield proc
    assert proc.stop() == 0


def digits_rows(repo, rows: int = 8) -> np.ndarray:
    with np.load(repo / "digits" / "1" / "validation.npz") as data:
        return data["x"][:rows]


def http_post(address: str, path: str, body: bytes, headers: dict[str, str] | None = None,
              ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_fp32_matches_keras(server, repo, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.rest)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7") and not client.is_model_ready("nope")
    x = digits_rows(repo, 16)
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("digits", [tensor], model_version="1", request_id="req-7", outputs=outputs)
    want = keras_outputs(repo, "digits", {"image": x})["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, **FP32)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "1"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary
    # No outputs named: tritonclient asks for every output as binary data (binary_data_output)
    np.testing.assert_allclose(client.infer("digits", [tensor]).as_numpy("probabilities"), want, **FP32)


def test_tritonclient_http_two_inputs_and_int32(server, repo):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.rest)
    rng = np.random.default_rng(0)
    feed = {"pixels": rng.standard_normal((3, 6)).astype(np.float32),
            "meta": rng.standard_normal((3, 3)).astype(np.float32)}
    inputs = []
    for name, value in feed.items():
        inputs.append(triton.InferInput(name, list(value.shape), "FP32"))
        inputs[-1].set_data_from_numpy(value, binary_data=name == "pixels")  # one binary, one JSON
    result = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("score")])
    assert result.as_numpy("label") is None  # the outputs filter
    np.testing.assert_allclose(result.as_numpy("score"), keras_outputs(repo, "two", feed)["score"], **FP32)
    tokens = rng.integers(0, 200, (2, 12)).astype(np.int32)
    tensor = triton.InferInput("tokens", list(tokens.shape), "INT32")
    tensor.set_data_from_numpy(tokens)
    np.testing.assert_allclose(client.infer("text", [tensor]).as_numpy("positive"),
                               keras_outputs(repo, "text", {"tokens": tokens})["positive"], **FP32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model, datatype, dtype, expected", [
    ("add64", "INT64", np.int64, lambda x: x + 1),
    ("half", "FP16", np.float16, lambda x: x * 2),
])
def test_tritonclient_http_int64_and_fp16(server, binary, model, datatype, dtype, expected):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.rest)
    metadata = client.get_model_metadata(model)
    assert metadata["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 4]}]
    x = (np.arange(12).reshape(3, 4) * (3 if dtype is np.int64 else 0.25) - 5).astype(dtype)
    if dtype is np.int64:
        x[0, 0] = 2 ** 62  # beyond float64's exact integers: JSON must carry it exactly
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("y", binary_data=binary)])
    got = result.as_numpy("y")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected(x))


def test_metadata_config_and_statistics_through_tritonclient(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.rest)
    server_metadata = client.get_server_metadata()
    assert server_metadata["name"] == "kdeploy" and "binary_tensor_data" in server_metadata["extensions"]
    metadata = client.get_model_metadata("digits", "1")
    assert metadata["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}
    config = client.get_model_config("digits")
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [8, 8, 1]
    stats = client.get_inference_statistics("digits")["model_stats"][0]
    assert stats["name"] == "digits" and stats["inference_count"] >= 0


def test_raw_binary_request(server):
    x = np.arange(4, dtype=np.int64)
    status, headers, body = http_post(server.rest, "/v2/models/add64/infer", x.tobytes(),
                                      {"Inference-Header-Content-Length": "0"})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    assert header["outputs"][0]["shape"] == [1, 4]
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<i8"), x + 1)


@pytest.mark.parametrize("body, headers, status, words", [
    (b"{not json", {}, 400, "the inference request is not JSON"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "500"}, 400,
     "Inference-Header-Content-Length is 500, but the body has 14 bytes"),
    (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": [0.0] * 63}]})
     .encode(), {}, 400, "input 'image': 'data' has 63 values; shape [1, 8, 8, 1] needs 64"),
    (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}).encode(),
     {}, 400, "input 'image': expected shape [-1, 8, 8, 1], got [1, 64]"),
])
def test_bad_requests_are_4xx_with_an_error_and_no_traceback(server, body, headers, status, words):
    got_status, got_headers, data = http_post(server.rest, "/v2/models/digits/infer", body, headers)
    answer = json.loads(data)
    assert (got_status, list(answer)) == (status, ["error"]) and words in answer["error"], answer
    assert got_headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in server.log()


def test_an_unknown_model_is_404(server):
    status, _, answer = http_post(server.rest, "/v2/models/nope/infer", b'{"inputs": []}')
    assert status == 404 and "model 'nope' is not served here" in json.loads(answer)["error"]
    with pytest.raises(Exception, match="404"):
        urllib.request.urlopen(f"http://{server.rest}/v2/models/nope", timeout=10)


def test_requests_are_counted_as_kserve_rest(server, repo):
    x = digits_rows(repo, 1)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    assert http_post(server.rest, "/v2/models/digits/infer", body)[0] == 200
    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    line = next(line for line in text.splitlines() if line.startswith("kdeploy_requests_total{")
                and 'protocol="kserve-rest"' in line and 'model="digits"' in line and 'status="OK"' in line)
    assert 'version="1"' in line and float(line.rsplit(" ", 1)[1]) >= 1


def test_drain_readiness_first_then_503(repo):
    """SIGTERM: KServe readiness is false at once over HTTP and gRPC, inference goes on for the grace period."""
    import tritonclient.grpc as triton_grpc

    proc = start_server("--repository", repo, "--model", "add64", "--drain-grace-seconds", "1.5",
                        "--drain-seconds", "5")
    grpc_client = triton_grpc.InferenceServerClient(proc.grpc)
    try:
        url = f"http://{proc.rest}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        assert grpc_client.is_server_ready()
        proc.process.send_signal(__import__("signal").SIGTERM)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
        deadline = time.monotonic() + 1.0
        ready_status = 200
        while ready_status == 200 and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=10)
            except urllib.error.HTTPError as error:
                ready_status = error.code
        assert ready_status == 503  # NOT ready at once ...
        assert not grpc_client.is_server_ready()  # (KServe's gRPC ServerReady too)
        assert http_post(proc.rest, "/v2/models/add64/infer", body.encode())[0] == 200  # ... still serving
        time.sleep(1.5)
        try:
            status = http_post(proc.rest, "/v2/models/add64/infer", body.encode())[0]
        except (ConnectionError, http.client.HTTPException):
            status = 503  # the process may have exited already: nothing in flight
        assert status == 503
    finally:
        grpc_client.close()
        assert proc.stop() == 0


@pytest.mark.parametrize("layout", ["version", "model", "repository"])
def test_model_dir_serves_what_kserve_storage_leaves_in_mnt_models(repo, tmp_path, layout):
    """`--model-dir /mnt/models --model-name ISVC`, as the kserve overlay's runtime runs the server."""
    import tritonclient.http as triton

    mnt = tmp_path / "mnt" / "models"
    source = {"version": repo / "digits" / "1", "model": repo / "digits", "repository": None}[layout]
    if source is None:
        shutil.copytree(repo / "digits", mnt / "digits")
    else:
        shutil.copytree(source, mnt)
    proc = start_server("--model-dir", mnt, "--model-name", "digits-isvc", "--poll-seconds", "0")
    try:
        client = triton.InferenceServerClient(proc.rest)
        assert client.is_model_ready("digits-isvc", "1")
        x = digits_rows(repo, 2)
        tensor = triton.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("digits-isvc", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(got, keras_outputs(repo, "digits", {"image": x})["probabilities"], **FP32)
    finally:
        assert proc.stop() == 0

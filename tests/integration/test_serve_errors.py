"""Every error row of the serve contract, through the official clients: the right status, a message naming the
input, what was expected and what came, and a server that keeps serving afterwards."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest

from tests.clients import rest, tfs_predict
from tests.conftest import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_server(exported_repo):
    proc = start_server("--repository", exported_repo, "--max-message-mb", "1")
    yield proc
    assert proc.stop() == 0


def grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def raw_predict(address: str, build) -> grpc.RpcError:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    build(request)
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return grpc_error(lambda: stub.Predict(request, timeout=30))


IMAGE = np.zeros((4, 8, 8, 1), np.float32)


@pytest.mark.parametrize("name, spec, code, words", [
    ("nope", {}, grpc.StatusCode.NOT_FOUND, ["'nope'", "digits"]),
    ("digits", {"version": 9}, grpc.StatusCode.NOT_FOUND, ["no version 9", "[1]"]),
    # TF Serving answers an unknown version label with INVALID_ARGUMENT (server_core.cc).
    ("digits", {"version_label": "canary"}, grpc.StatusCode.INVALID_ARGUMENT,
     ["Unrecognized servable version label: canary"]),
    # TF Serving answers an unknown signature in Predict with FAILED_PRECONDITION (predict_util.cc).
    ("digits", {"signature_name": "classify"}, grpc.StatusCode.FAILED_PRECONDITION,
     ['signature key "classify" not found']),
])
def test_model_spec_errors(onnx_server, name, spec, code, words):
    error = grpc_error(lambda: tfs_predict(onnx_server.grpc, name, {"image": IMAGE}, **spec))
    assert error.code() == code
    assert all(w in error.details() for w in words), error.details()


@pytest.mark.parametrize("name, feed, words", [
    ("two", {"pixels": np.zeros((2, 6), np.float32)}, ["missing input 'meta'"]),
    ("digits", {"image": IMAGE, "extra": IMAGE}, ["unknown input 'extra'", "['image']"]),
    ("digits", {"image": IMAGE.astype(np.float64)}, ["input 'image'", "expected dtype DT_FLOAT", "got DT_DOUBLE"]),
    (
        "digits",
        {"image": np.zeros((4, 64), np.float32)},
        ["input 'image'", "expected shape [-1, 8, 8, 1]", "got [4, 64]"],
    ),
    ("digits", {"image": np.zeros((4, 8, 7, 1), np.float32)}, ["expected shape [-1, 8, 8, 1]", "got [4, 8, 7, 1]"]),
    ("digits", {}, ["no inputs", "['image']"]),
])
def test_input_errors_are_invalid_argument(onnx_server, name, feed, words):
    error = grpc_error(lambda: tfs_predict(onnx_server.grpc, name, feed))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(w in error.details() for w in words), error.details()


def test_tensor_content_length_must_match_the_shape(onnx_server):
    def build(request):
        request.model_spec.name = "digits"
        tensor = request.inputs["image"]
        tensor.dtype = 1
        for size in (2, 8, 8, 1):
            tensor.tensor_shape.dim.add().size = size
        tensor.tensor_content = b"\0" * 100

    error = raw_predict(onnx_server.grpc, build)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor_content has 100 bytes" in error.details() and "needs 512" in error.details()


def test_kserve_errors(onnx_server):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(onnx_server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits")
        request.inputs.add(name="image", datatype="FP64", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(b"\0" * 512)
        error = grpc_error(lambda: stub.ModelInfer(request, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected datatype FP32, got FP64" in error.details()
        request.inputs[0].datatype = "FP32"
        error = grpc_error(lambda: stub.ModelInfer(request, timeout=10))
        assert "raw_input_contents has 512 bytes" in error.details() and "needs 256" in error.details()
        request.model_name = "nope"
        assert grpc_error(lambda: stub.ModelInfer(request, timeout=10)).code() == grpc.StatusCode.NOT_FOUND
        request = service_pb2.ModelInferRequest(model_name="digits")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(b"\0" * 256)
        request.outputs.add(name="logits")
        error = grpc_error(lambda: stub.ModelInfer(request, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown output 'logits'" in error.details()


def test_oversized_messages_are_resource_exhausted(onnx_server):
    big = np.zeros((5000, 8, 8, 1), np.float32)  # 1.3 MB, over --max-message-mb 1
    error = grpc_error(lambda: tfs_predict(onnx_server.grpc, "digits", {"image": big}))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, body = rest(onnx_server, "/v1/models/digits:predict", {"instances": big.tolist()})
    assert status == 413 and "over the limit" in body["error"]


def test_token_ids_outside_the_vocabulary_are_invalid_argument(onnx_server):
    tokens = np.full((2, 12), 10_000, np.int32)  # beyond the Embedding's 200-word vocabulary
    error = grpc_error(lambda: tfs_predict(onnx_server.grpc, "text", {"tokens": tokens}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'tokens': expected values in [0, 199], got values from 10000 to 10000" in error.details()


def test_backend_failure_is_internal_and_the_server_lives_on(exported_repo, tmp_path):
    # Without the manifest's value range the ids reach onnxruntime, whose Gather fails: a runtime error.
    shutil.copytree(exported_repo / "text", tmp_path / "text")
    manifest_path = tmp_path / "text" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["signature"]["inputs"][0]["range"]
    manifest_path.write_text(json.dumps(manifest))
    proc = start_server("--repository", tmp_path, "--no-rest")
    try:
        tokens = np.full((2, 12), 10_000, np.int32)
        error = grpc_error(lambda: tfs_predict(proc.grpc, "text", {"tokens": tokens}))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "'text' version 1 failed" in error.details() and "Gather" not in error.details()
        assert tfs_predict(proc.grpc, "text", {"tokens": np.ones((2, 12), np.int32)})["positive"].shape == (2, 1)
        assert proc.process.poll() is None
    finally:
        assert proc.stop() == 0
    assert "Gather" in proc.log()  # the log has the runtime's reason


def test_rest_errors(onnx_server):
    assert rest(onnx_server, "/v1/models/nope")[0] == 404
    assert rest(onnx_server, "/v1/models/digits/versions/9:predict", {"instances": [[0]]})[0] == 404
    status, body = rest(onnx_server, "/v1/models/digits:predict", b"{not json")
    assert status == 400 and "JSON Parse error" in body["error"]
    status, body = rest(onnx_server, "/v1/models/digits:predict", {"rows": []})
    assert status == 400 and "'instances'" in body["error"]
    status, body = rest(onnx_server, "/v1/models/digits:predict", {"instances": [[1, 2, 3]]})
    assert status == 400 and "expected shape [-1, 8, 8, 1], got [1, 3]" in body["error"]
    status, body = rest(onnx_server, "/v1/models/digits:predict", {"instances": [["a"]]})
    assert status == 400 and "input 'image'" in body["error"]


def test_a_version_that_fails_to_load_is_reported_and_others_still_serve(exported_repo, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    shutil.copytree(exported_repo / "digits", tmp_path / "digits")
    shutil.copytree(exported_repo / "digits", tmp_path / "broken")
    with open(tmp_path / "broken" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"corruption")
    proc = start_server("--repository", tmp_path)
    try:
        assert "broken:1(END)" in proc.banner and "digits:1(AVAILABLE)" in proc.banner
        with grpc.insecure_channel(proc.grpc) as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "broken"}), timeout=10)
            entry = status.model_version_status[0]
            assert entry.state == 50 and "sha256" in entry.status.error_message  # END, with the reason
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="broken"), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        error = grpc_error(lambda: tfs_predict(proc.grpc, "broken", {"image": IMAGE}))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "END" in error.details()
        assert rest(proc, "/v1/models/broken:predict", {"instances": IMAGE.tolist()})[0] == 503
        assert tfs_predict(proc.grpc, "digits", {"image": IMAGE})["probabilities"].shape == (4, 10)
    finally:
        assert proc.stop() == 0


def test_model_config_file_with_labels(exported_repo, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{
    name: "digits"
    base_path: "{exported_repo / 'digits'}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 }} }}
    version_labels {{ key: "stable" value: 1 }}
  }}
}}
""")
    proc = start_server("--model-config-file", config)
    try:
        got = tfs_predict(proc.grpc, "digits", {"image": IMAGE}, version_label="stable")
        assert got["probabilities"].shape == (4, 10)
        assert rest(proc, "/v1/models/digits/labels/stable")[1]["model_version_status"][0]["version"] == "1"
        assert grpc_error(lambda: tfs_predict(proc.grpc, "tabular", {"features": np.zeros((1, 30), np.float32)})
                          ).code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert proc.stop() == 0

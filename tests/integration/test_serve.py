"""The real server in a child process, called with the official clients: tensorflow-serving-api, tritonclient,
grpc_health and plain HTTP."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from kdeploy.contract.manifest import read_manifest
from tests.clients import keras_outputs, rest, tfs_predict
from tests.conftest import start_server

pytestmark = pytest.mark.slow
FP32 = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module", params=["onnx", "savedmodel", "tflite"])
def server(request, exported_repo):
    proc = start_server("--repository", exported_repo, "--backend", request.param)
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def onnx_server(exported_repo):
    proc = start_server("--repository", exported_repo)
    yield proc
    assert proc.stop() == 0


def validation_rows(repo: Path, name: str, rows: int = 8) -> np.ndarray:
    with np.load(repo / name / "1" / "validation.npz") as data:
        return data["x"][:rows]


def two_feed(rows: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"pixels": rng.standard_normal((rows, 6)).astype(np.float32),
            "meta": rng.standard_normal((rows, 3)).astype(np.float32)}


# --- TF Serving gRPC -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits", "tabular"])
def test_tfserving_predict_matches_keras_for_every_backend(server, exported_repo, name):
    feed_name = {"digits": "image", "tabular": "features"}[name]
    x = validation_rows(exported_repo, name)
    got = tfs_predict(server.grpc, name, {feed_name: x})
    want = keras_outputs(exported_repo, name, {feed_name: x})
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], **FP32)


def test_predict_answers_in_typed_fields_as_tf_serving_does(exported_repo):
    # TF Serving's example clients read result.outputs['scores'].float_val: its default, and kdeploy's.
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    x = validation_rows(exported_repo, "digits", rows=2)
    want = keras_outputs(exported_repo, "digits", {"image": x})["probabilities"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].dtype = 1  # DT_FLOAT
    for size in x.shape:
        request.inputs["image"].tensor_shape.dim.add().size = size
    request.inputs["image"].float_val.extend(x.ravel().tolist())
    for encoding, field in (("typed", "float_val"), ("content", "tensor_content")):
        proc = start_server("--repository", exported_repo, "--model", "digits", "--no-rest", "--no-metrics",
                            "--predict-tensor-encoding", encoding)
        try:
            with grpc.insecure_channel(proc.grpc) as channel:
                response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        finally:
            assert proc.stop() == 0
        output = response.outputs["probabilities"]
        assert output.ListFields() and {f.name for f, _ in output.ListFields()} >= {"dtype", "tensor_shape", field}
        if encoding == "typed":
            got = np.array(output.float_val, np.float32).reshape(want.shape)
        else:
            got = np.frombuffer(output.tensor_content, np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, **FP32)


def test_two_inputs_two_outputs_over_both_grpc_protocols(server, exported_repo):
    import tritonclient.grpc as triton

    feed = two_feed()
    want = keras_outputs(exported_repo, "two", feed)
    got = tfs_predict(server.grpc, "two", feed)
    for key in ("label", "score"):
        np.testing.assert_allclose(got[key], want[key], **FP32)
    client = triton.InferenceServerClient(server.grpc)
    inputs = []
    for key, value in feed.items():
        tensor = triton.InferInput(key, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("score")])
    np.testing.assert_allclose(result.as_numpy("score"), want["score"], **FP32)
    assert result.as_numpy("label") is None  # only the requested output comes back


def test_typed_float_val_with_tensorflows_repeat_rule(onnx_server, exported_repo):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tabular"
    tensor = request.inputs["features"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add().size = 2
    tensor.tensor_shape.dim.add().size = 30
    tensor.float_val.extend([5.0, 3.0])  # 2 of 60 values: the last one repeats
    with grpc.insecure_channel(onnx_server.grpc) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    expected_input = np.full((2, 30), 3.0, np.float32)
    expected_input[0, 0] = 5.0
    want = keras_outputs(exported_repo, "tabular", {"features": expected_input})["probability"]
    got = np.array(response.outputs["probability"].float_val, np.float32).reshape(2, 1)  # typed, as TF Serving
    np.testing.assert_allclose(got, want, **FP32)


def test_tfserving_metadata_and_status(onnx_server):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    with grpc.insecure_channel(onnx_server.grpc) as channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "digits"
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        image = signatures.signature_def["serving_default"].inputs["image"]
        assert image.dtype == 1 and [d.size for d in image.tensor_shape.dim] == [-1, 8, 8, 1]
        assert list(signatures.signature_def["serving_default"].outputs) == ["probabilities"]
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "digits"}), timeout=10)
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE


def test_classify_on_a_predict_signature_is_invalid(onnx_server):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits"
    request.input.example_list.examples.add()
    with grpc.insecure_channel(onnx_server.grpc) as channel, pytest.raises(grpc.RpcError) as error:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name to be tensorflow/serving/classify" in error.value.details()


# --- KServe v2 / Triton ----------------------------------------------------------------------------------------

def test_tritonclient_end_to_end(server, exported_repo):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1") and not client.is_model_ready("digits", "7")
    assert not client.is_model_ready("nope")
    metadata = client.get_model_metadata("digits")
    assert metadata.inputs[0].name == "image" and list(metadata.inputs[0].shape) == [-1, 8, 8, 1]
    assert metadata.outputs[0].datatype == "FP32" and list(metadata.versions) == ["1"]
    x = validation_rows(exported_repo, "digits", 16)
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents
    result = client.infer("digits", [tensor], model_version="1", request_id="req-7")
    want = keras_outputs(exported_repo, "digits", {"image": x})["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, **FP32)
    assert result.get_response().id == "req-7"
    config = client.get_model_config("digits").config
    assert config.max_batch_size > 0 and list(config.input[0].dims) == [8, 8, 1]
    stats = client.get_inference_statistics("digits").model_stats[0]
    assert stats.inference_count >= 16 and stats.execution_count >= 1
    server_metadata = client.get_server_metadata()
    assert server_metadata.name == "kdeploy" and "model_configuration" in server_metadata.extensions


def test_kserve_typed_contents(onnx_server, exported_repo):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = validation_rows(exported_repo, "tabular", 3)
    request = service_pb2.ModelInferRequest(model_name="tabular")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(onnx_server.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(got, keras_outputs(exported_repo, "tabular", {"features": x})["probability"], **FP32)


# --- health, reflection, REST ----------------------------------------------------------------------------------

def test_health_for_server_and_each_model(onnx_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(onnx_server.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "digits", "tabular", "two", "text"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(onnx_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(onnx_server.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"tensorflow.serving.PredictionService", "inference.GRPCInferenceService",
                "grpc.health.v1.Health"} <= services
        file_proto = database.FindFileContainingSymbol("tensorflow.serving.PredictionService")
        assert file_proto.name == "tensorflow_serving/apis/prediction_service.proto"


def test_rest_status_metadata_and_predict_both_formats(server, exported_repo):
    status, body = rest(server, "/v1/models/digits")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = rest(server, "/v1/models/digits/versions/1/metadata")
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    x = validation_rows(exported_repo, "digits", 4)
    want = keras_outputs(exported_repo, "digits", {"image": x})["probabilities"]
    status, body = rest(server, "/v1/models/digits:predict", {"instances": x.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"], np.float32), want, **FP32)
    status, body = rest(server, "/v1/models/digits/versions/1:predict", {"inputs": {"image": x.tolist()}})
    np.testing.assert_allclose(np.array(body["outputs"], np.float32), want, **FP32)
    feed = two_feed(2)
    rows = [{k: v[i].tolist() for k, v in feed.items()} for i in range(2)]
    status, body = rest(server, "/v1/models/two:predict", {"instances": rows})
    want_two = keras_outputs(exported_repo, "two", feed)
    np.testing.assert_allclose(
        np.array([r["score"] for r in body["predictions"]], np.float32), want_two["score"], **FP32
    )


def test_onnx_server_has_no_tensorflow_loaded(onnx_server):
    pid = onnx_server.process.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "tensorflow" not in maps and "_pywrap_tensorflow" not in maps
    rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")))
    print(f"onnx server RSS with 4 models loaded: {rss_kib / 1024:.0f} MiB")
    assert "backend=onnx" in onnx_server.banner


def test_unavailable_onnxruntime_provider_falls_back_to_cpu(exported_repo, caplog):
    from kdeploy.runtimes.onnxruntime_backend import OnnxRuntimeBackend

    version = exported_repo / "tabular" / "1"
    backend = OnnxRuntimeBackend(version / "model.onnx", read_manifest(version).signature,
                                 providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"),
                                 graph_optimization="basic")
    assert "not available" in caplog.text and "CUDAExecutionProvider" in caplog.text
    assert backend.infer({"features": np.zeros((2, 30), np.float32)})["probability"].shape == (2, 1)

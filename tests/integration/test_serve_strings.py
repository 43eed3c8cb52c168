"""A model that takes strings (StringLookup in front of an Embedding), served end to end through the official
clients: TF Serving's DT_STRING `string_val`, KServe v2 BYTES (tritonclient over gRPC and HTTP), REST JSON strings."""

from __future__ import annotations

import numpy as np
import pytest

from tests.clients import keras_outputs, rest
from tests.conftest import start_server
from tests.integration.test_export_coverage import _save, _string_model

pytestmark = pytest.mark.slow

SENTENCES = np.array([["the", "cat", "sat"], ["a", "mat", "on"], ["dog", "the", "unknown"]], dtype=object)
FP32 = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def words_repo(tmp_path_factory):
    from kdeploy.export.exporter import ExportConfig, export_model

    tmp = tmp_path_factory.mktemp("words")
    path = _save(_string_model(), tmp / "words.keras")
    result = export_model(ExportConfig(model_path=path, repository=tmp / "repo", name="words", allow_partial=True),
                          progress=lambda _: None)
    assert result.published and set(result.manifest.artifacts) == {"savedmodel", "tflite"}
    return tmp / "repo"


@pytest.mark.parametrize("backend", ["savedmodel", "tflite"])
def test_string_inputs_through_every_protocol(words_repo, backend):
    import grpc
    import tensorflow as tf
    import tritonclient.grpc as triton
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    want = keras_outputs(words_repo, "words", {"words": SENTENCES.astype(bytes).astype(object)})["p"]
    proc = start_server("--repository", words_repo, "--backend", backend)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "words"
        request.inputs["words"].CopyFrom(tf.make_tensor_proto(SENTENCES.astype(bytes)))
        assert request.inputs["words"].dtype == tf.string.as_datatype_enum and request.inputs["words"].string_val
        with grpc.insecure_channel(proc.grpc) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["p"]), want, **FP32)

        client = triton.InferenceServerClient(proc.grpc)
        tensor = triton.InferInput("words", list(SENTENCES.shape), "BYTES")
        tensor.set_data_from_numpy(SENTENCES.astype(bytes).astype(object))
        np.testing.assert_allclose(client.infer("words", [tensor]).as_numpy("p"), want, **FP32)
        metadata = client.get_model_metadata("words")
        assert metadata.inputs[0].datatype == "BYTES"
        config = client.get_model_config("words").config
        assert triton.model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_STRING"

        # KServe v2 over HTTP: BYTES as binary data (length-prefixed) and as JSON strings
        import tritonclient.http as triton_http

        http_client = triton_http.InferenceServerClient(proc.rest)
        for binary in (True, False):
            tensor = triton_http.InferInput("words", list(SENTENCES.shape), "BYTES")
            tensor.set_data_from_numpy(SENTENCES.astype(bytes).astype(object), binary_data=binary)
            result = http_client.infer("words", [tensor], outputs=[triton_http.InferRequestedOutput("p", binary)])
            np.testing.assert_allclose(result.as_numpy("p"), want, **FP32)
        assert http_client.get_model_metadata("words")["inputs"][0]["datatype"] == "BYTES"

        status, body = rest(proc, "/v1/models/words:predict", {"instances": SENTENCES.tolist()})
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["predictions"]), want, **FP32)
        status, body = rest(proc, "/v1/models/words:predict", {"instances": [[1, 2, 3]]})
        assert status == 400 and "input 'words'" in body["error"] and "strings" in body["error"]
    finally:
        assert proc.stop() == 0

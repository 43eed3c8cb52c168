"""Every signature of a TF1 SavedModel served by the real server (`--backend savedmodel`, no manifest.json) and
called with tensorflow-serving-api's stubs and REST: Predict by signature_name, Classify, Regress, MultiInference,
GetModelMetadata, and TF Serving's errors. Answers are compared with the same SavedModel run in TensorFlow."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest

from tests.clients import rest
from tests.conftest import start_server
from tests.integration.test_serve_lifecycle import metric, scrape
from tests.tf1_savedmodel import LABELS, METHODS, example_bytes, tf_outputs, write_tf1_savedmodel

pytestmark = pytest.mark.slow

FP32 = {"atol": 1e-5, "rtol": 1e-4}
X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [0.0, 3.0, 1.0]], dtype=np.float32)
N = [0, 2, -1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    repo = tmp_path_factory.mktemp("signatures")
    write_tf1_savedmodel(repo / "tf1" / "1")
    return repo / "tf1" / "1"


@pytest.fixture(scope="module")
def server(model):
    proc = start_server("--repository", model.parent.parent, "--backend", "savedmodel")
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def stub(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def tf_examples(x: np.ndarray = X, n: list[int] | None = N) -> list:
    import tensorflow as tf

    return [tf.train.Example.FromString(b) for b in example_bytes(x, n)]


def task_request(cls, signature: str, examples: list | None = None, context=None):
    request = cls()
    request.model_spec.name = "tf1"
    request.model_spec.signature_name = signature
    if context is not None:
        request.input.example_list_with_context.context.CopyFrom(context)
        request.input.example_list_with_context.examples.extend(examples or [])
    else:
        request.input.example_list.examples.extend(tf_examples() if examples is None else examples)
    return request


def classify_request(signature: str = "classify", examples: list | None = None, context=None):
    from tensorflow_serving.apis import classification_pb2

    return task_request(classification_pb2.ClassificationRequest, signature, examples, context)


def regress_request(signature: str = "regress", examples: list | None = None, context=None):
    from tensorflow_serving.apis import regression_pb2

    return task_request(regression_pb2.RegressionRequest, signature, examples, context)


def labels_and_scores(result) -> tuple[list[list[str]], np.ndarray]:
    labels = [[c.label for c in row.classes] for row in result.classifications]
    return labels, np.array([[c.score for c in row.classes] for row in result.classifications], dtype=np.float32)


def grpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    return error.value


# --- Predict and metadata ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("signature_name", ["", "serving_default"])
def test_predict_runs_the_default_signature(stub, model, signature_name):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.model_spec.signature_name = signature_name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), tf_outputs(model, "serving_default", x=X)["y"],
                               **FP32)


def test_predict_runs_the_signature_it_names(stub, model):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    serialized = np.array(example_bytes(X, N), dtype=object)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.model_spec.signature_name = "classify"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(serialized))
    response = stub.Predict(request, timeout=30)
    want = tf_outputs(model, "classify", inputs=serialized.tolist())
    assert response.model_spec.signature_name == "classify" and set(response.outputs) == {"classes", "scores"}
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), want["scores"], **FP32)
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == want["classes"].tolist()


def test_metadata_lists_every_signature_with_its_method(stub, server):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tf1"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {name: s.method_name for name, s in signatures.signature_def.items()} == {
        name: f"tensorflow/serving/{method}" for name, method in METHODS.items()}
    classify = signatures.signature_def["classify"]
    assert classify.inputs["inputs"].dtype == 7 and [d.size for d in classify.inputs["inputs"].tensor_shape.dim] == [-1]
    assert (classify.outputs["classes"].dtype, classify.outputs["scores"].dtype) == (7, 1)  # DT_STRING, DT_FLOAT

    status, body = rest(server, "/v1/models/tf1/metadata")
    assert status == 200, body
    described = body["metadata"]["signature_def"]["signature_def"]
    assert {name: s["method_name"] for name, s in described.items()} == {
        name: f"tensorflow/serving/{method}" for name, method in METHODS.items()}
    assert described["regress"]["outputs"]["outputs"]["dtype"] == "DT_FLOAT"


# --- Classify, Regress, MultiInference -------------------------------------------------------------------------

def test_classify_answers_labels_and_scores_as_tensorflow_computes_them(stub, model):
    response = stub.Classify(classify_request(), timeout=30)
    assert response.model_spec.name == "tf1" and response.model_spec.signature_name == "classify"
    assert response.model_spec.version.value == 1
    want = tf_outputs(model, "classify", inputs=example_bytes(X, N))
    labels, scores = labels_and_scores(response.result)
    assert labels == [list(LABELS)] * len(X)
    np.testing.assert_allclose(scores, want["scores"], **FP32)


def test_classify_merges_the_context_into_every_example(stub, model):
    import tensorflow as tf

    context = tf.train.Example()
    context.features.feature["n"].int64_list.value.append(3)
    response = stub.Classify(classify_request(examples=tf_examples(n=None), context=context), timeout=30)
    want = tf_outputs(model, "classify", inputs=example_bytes(X, [3] * len(X)))
    np.testing.assert_allclose(labels_and_scores(response.result)[1], want["scores"], **FP32)


def test_scores_only_and_classes_only_classifiers(stub, model):
    want = tf_outputs(model, "classify", inputs=example_bytes(X, N))
    labels, scores = labels_and_scores(stub.Classify(classify_request("scores_only"), timeout=30).result)
    assert labels == [[""] * len(LABELS)] * len(X)
    np.testing.assert_allclose(scores, want["scores"], **FP32)
    labels, scores = labels_and_scores(stub.Classify(classify_request("classes_only"), timeout=30).result)
    assert labels == [list(LABELS)] * len(X) and not scores.any()


def test_regress_answers_one_value_per_example(stub, model):
    response = stub.Regress(regress_request(), timeout=30)
    assert response.model_spec.signature_name == "regress" and response.model_spec.version.value == 1
    want = tf_outputs(model, "regress", inputs=example_bytes(X, N))["outputs"].reshape(-1)
    np.testing.assert_allclose([r.value for r in response.result.regressions], want, **FP32)


def test_multi_inference_classifies_and_regresses_one_input(stub, model, server):
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "classify"), ("regress", "regress")):
        task = request.tasks.add()
        task.model_spec.name = "tf1"
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    request.input.example_list.examples.extend(tf_examples())
    before = scrape(server.metrics)
    response = stub.MultiInference(request, timeout=30)
    after = scrape(server.metrics)
    labels = {"model": "tf1", "version": "1", "protocol": "tfserving-grpc", "status": "OK"}
    assert metric(after, "kdeploy_requests_total", **labels) == metric(before, "kdeploy_requests_total", **labels) + 1
    first, second = response.results
    assert (first.model_spec.signature_name, second.model_spec.signature_name) == ("classify", "regress")
    assert first.WhichOneof("result") == "classification_result" and second.WhichOneof("result") == "regression_result"
    np.testing.assert_allclose(labels_and_scores(first.classification_result)[1],
                               tf_outputs(model, "classify", inputs=example_bytes(X, N))["scores"], **FP32)
    np.testing.assert_allclose([r.value for r in second.regression_result.regressions],
                               tf_outputs(model, "regress", inputs=example_bytes(X, N))["outputs"].reshape(-1), **FP32)


# --- REST ------------------------------------------------------------------------------------------------------

def json_examples(x: np.ndarray = X, n: list[int] | None = N) -> list[dict]:
    # JSON floats (float_list) for x, JSON integers (int64_list) for n, as TF Serving's REST API reads them.
    return [{"x": [float(v) for v in row], **({"n": n[i]} if n is not None else {})} for i, row in enumerate(x)]


def test_rest_classify_and_regress(server, model):
    status, body = rest(server, "/v1/models/tf1:classify", {"signature_name": "classify", "examples": json_examples()})
    assert status == 200, body
    want = tf_outputs(model, "classify", inputs=example_bytes(X, N))
    assert [[label for label, _ in row] for row in body["results"]] == [list(LABELS)] * len(X)
    np.testing.assert_allclose([[score for _, score in row] for row in body["results"]], want["scores"], **FP32)

    status, body = rest(server, "/v1/models/tf1/versions/1:regress",
                        {"signature_name": "regress", "context": {"n": 3}, "examples": json_examples(n=None)})
    assert status == 200, body
    want = tf_outputs(model, "regress", inputs=example_bytes(X, [3] * len(X)))["outputs"].reshape(-1)
    np.testing.assert_allclose(body["results"], want, **FP32)


def test_an_example_the_model_cannot_parse_is_the_clients_error(server):
    # x written as JSON integers becomes an int64_list, which the model's float feature cannot parse: TF Serving
    # answers INVALID_ARGUMENT with TensorFlow's message, and so does kdeploy (the server goes on).
    examples = [{"x": [int(v) for v in row], "n": 1} for row in X]
    status, body = rest(server, "/v1/models/tf1:classify", {"signature_name": "classify", "examples": examples})
    assert status == 400 and "TensorFlow refused the input" in body["error"], body
    status, body = rest(server, "/v1/models/tf1:classify", {"signature_name": "classify", "examples": json_examples()})
    assert status == 200, body


def test_rest_predict_names_its_signature(server, model):
    status, body = rest(server, "/v1/models/tf1:predict", {"instances": X.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], tf_outputs(model, "serving_default", x=X)["y"], **FP32)
    status, body = rest(server, "/v1/models/tf1:predict", {"signature_name": "regress", "instances": [
        {"b64": base64.b64encode(e).decode()} for e in example_bytes(X, N)]})
    assert status == 200, body
    want = tf_outputs(model, "regress", inputs=example_bytes(X, N))["outputs"]
    np.testing.assert_allclose(body["predictions"], want, **FP32)


# --- errors, as TF Serving answers them ------------------------------------------------------------------------

def test_unknown_signatures(stub, server):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.model_spec.signature_name = "nope"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    error = grpc_error(stub.Predict, request)  # TF Serving's Predict: FAILED_PRECONDITION
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found' in error.details() and "classify" in error.details()
    error = grpc_error(stub.Classify, classify_request("nope"))  # Classify and Regress: INVALID_ARGUMENT
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "No signature was found with the name: nope" in error.details()
    assert rest(server, "/v1/models/tf1:predict", {"signature_name": "nope", "instances": X.tolist()})[0] == 400


def test_a_signature_that_cannot_do_the_task(stub, server):
    error = grpc_error(stub.Classify, classify_request("regress"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("Expected classification signature method_name to be "
                                      "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    error = grpc_error(stub.Regress, regress_request(""))  # the default signature predicts
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Was: tensorflow/serving/predict" in error.details()
    status, body = rest(server, "/v1/models/tf1:regress", {"signature_name": "classify", "examples": json_examples()})
    assert status == 400 and "Expected regression signature method_name" in body["error"]


def test_empty_input(stub, server):
    error = grpc_error(stub.Classify, classify_request(examples=[]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("Input is empty")
    status, body = rest(server, "/v1/models/tf1:classify", {"signature_name": "classify", "examples": []})
    assert status == 400 and "'examples' value is an empty array" in body["error"]
    status, body = rest(server, "/v1/models/tf1:classify", {"signature_name": "classify", "examples": [{"x": None}]})
    assert status == 400 and "Feature: x has element with unexpected JSON type: null" in body["error"]


@pytest.mark.parametrize("tasks, code, words", [
    ([], grpc.StatusCode.INVALID_ARGUMENT, "has no tasks"),
    ([("tf1", "classify", "classify"), ("other", "regress", "regress")], grpc.StatusCode.INVALID_ARGUMENT,
     "All ModelSpecs in a MultiInferenceRequest must access the same model name"),
    ([("tf1", "classify", "classify"), ("tf1", "classify", "classify")], grpc.StatusCode.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: classify"),
    ([("tf1", "nope", "classify")], grpc.StatusCode.INVALID_ARGUMENT,
     "Requested signature not found in model graph: nope"),
    ([("tf1", "classify", "predict")], grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name"),
    ([("tf1", "regress", "classify")], grpc.StatusCode.INVALID_ARGUMENT,
     "Expected classification signature method_name"),
    ([("nope", "classify", "classify")], grpc.StatusCode.NOT_FOUND, "model 'nope' is not served here"),
])
def test_multi_inference_errors(stub, tasks, code, words):
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    request.input.example_list.examples.extend(tf_examples())
    error = grpc_error(stub.MultiInference, request)
    assert error.code() == code and words in error.details()

"""TF Serving's `get_model_status_impl_test.cc` and `predict_impl_test.cc`, ported to gRPC calls against
`kdeploy serve`, with the official stubs.

Upstream calls GetModelStatusImpl and TensorflowPredictor in-process; here the same requests go to a server with the
same models: `saved_model_half_plus_two_2_versions` (both versions, specific policy), TF Serving's half_plus_two for
Predict (upstream loads TensorFlow's copy, `cc/saved_model/testdata/half_plus_two`; its signatures are the same), and
`saved_model_counter`, whose signatures take no input or a scalar and answer scalars.
"""

from __future__ import annotations

import grpc
import pytest

from tests.tfserving.harness import RPC_TIMEOUT, model_path

pytestmark = pytest.mark.slow

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
TEST_MODEL = "test_model"
VERSION = 123


def _config(tmp_path_factory, models: dict[str, tuple[str, str]]):
    path = tmp_path_factory.mktemp("config") / "models.config"
    entries = "".join(f"""  config {{
    name: "{name}"
    base_path: "{model_path(folder)}"
    model_platform: "tensorflow"
    {policy}
  }}
""" for name, (folder, policy) in models.items())
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


@pytest.fixture(scope="module")
def address(servers, tmp_path_factory) -> str:
    config = _config(tmp_path_factory, {
        TWO_VERSIONS: (TWO_VERSIONS, "model_version_policy { specific { versions: 123 versions: 124 } }"),
        TEST_MODEL: (TWO_VERSIONS, "model_version_policy { specific { versions: 123 } }"),
        "counter": ("saved_model_counter", ""),
    })
    return servers.run_server(None, None, model_config_file=config).grpc


def _status(address: str, **spec):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    with grpc.insecure_channel(address) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, RPC_TIMEOUT)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_missing_or_empty_model_spec_failure(address):
    assert _error(lambda: _status(address)).code() is grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_model_name_failure(address):
    assert _error(lambda: _status(address, name="nonexistent_model")).code() is grpc.StatusCode.NOT_FOUND


def test_invalid_model_version_failure(address):
    error = _error(lambda: _status(address, name=TWO_VERSIONS, version=125))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_all_versions_success(address):
    response = _status(address, name=TWO_VERSIONS)
    assert len(response.model_version_status) == 2
    assert {s.version for s in response.model_version_status} == {123, 124}
    for status in response.model_version_status:
        assert status.status.error_code == 0 and status.status.error_message == ""


def test_single_version_success(address):
    response = _status(address, name=TWO_VERSIONS, version=123)
    assert len(response.model_version_status) == 1
    assert response.model_version_status[0].version == 123
    assert response.model_version_status[0].status.error_code == 0
    assert response.model_version_status[0].status.error_message == ""


def _predict(address: str, build):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    build(request)
    with grpc.insecure_channel(address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, RPC_TIMEOUT)


def _float_tensor(value: float):
    """Upstream's `tensor_proto.add_float_val(v); set_dtype(DT_FLOAT)`: a scalar (no shape)."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    tensor.float_val.append(value)
    return tensor


def _expected(spec: dict, outputs: dict[str, float]):
    """The PredictResponse upstream expects: the request's model_spec and scalar float outputs."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = spec["name"]
    response.model_spec.version.value = spec["version"]
    response.model_spec.signature_name = spec["signature_name"]
    for key, value in outputs.items():
        response.outputs[key].dtype = types_pb2.DT_FLOAT
        response.outputs[key].tensor_shape.SetInParent()
        response.outputs[key].float_val.append(value)
    return response


def _spec(request, name=TEST_MODEL, version=VERSION, signature_name=None):
    request.model_spec.name = name
    request.model_spec.version.value = version
    if signature_name is not None:
        request.model_spec.signature_name = signature_name


def test_missing_or_empty_model_spec(address):
    assert _error(lambda: _predict(address, lambda r: None)).code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _error(lambda: _predict(address, lambda r: _spec(r, name="test"))).code() is grpc.StatusCode.NOT_FOUND


def test_empty_input_list(address):
    assert _error(lambda: _predict(address, _spec)).code() is grpc.StatusCode.INVALID_ARGUMENT


def test_input_tensors_dont_match_model_spec_inputs(address):
    from tensorflow.core.framework import tensor_pb2, types_pb2

    def build(request):
        _spec(request)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        tensor.string_val.append(b"any_key")
        tensor.tensor_shape.dim.add().size = 1
        request.inputs["key"].CopyFrom(tensor)

    assert _error(lambda: _predict(address, build)).code() is grpc.StatusCode.INVALID_ARGUMENT


def test_output_filters_dont_match_model_spec_outputs(address):
    def build(filters):
        def fill(request):
            _spec(request)
            request.inputs["x"].CopyFrom(_float_tensor(2.0))
            request.output_filter.extend(filters)
        return fill

    assert _error(lambda: _predict(address, build(["output_filter"]))).code() is grpc.StatusCode.INVALID_ARGUMENT
    _predict(address, build(["y"]))
    assert _error(lambda: _predict(address, build(["y", "y"]))).code() is grpc.StatusCode.INVALID_ARGUMENT


def test_input_tensors_have_wrong_type(address):
    from tensorflow.core.framework import tensor_pb2, types_pb2

    def build(request):
        _spec(request)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        tensor.string_val.append(b"any_key")
        tensor.tensor_shape.dim.add().size = 1
        request.inputs["x"].CopyFrom(tensor)
        request.output_filter.append("y")

    assert _error(lambda: _predict(address, build)).code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("signature_name, input_key, output_key, expected", [
    (None, "x", "y", 3.0),  # PredictionSuccess: the default signature (named in the answer)
    ("regress_x2_to_y3", "inputs", "outputs", 4.0),  # PredictionWithNamedRegressionSignature
    ("classify_x2_to_y3", "inputs", "scores", 4.0),  # PredictionWithNamedClassificationSignature
])
def test_prediction_success_and_named_signatures(address, signature_name, input_key, output_key, expected):
    def build(request):
        _spec(request, signature_name=signature_name)
        request.inputs[input_key].CopyFrom(_float_tensor(2.0))

    response = _predict(address, build)
    spec = {"name": TEST_MODEL, "version": VERSION, "signature_name": signature_name or "serving_default"}
    assert response == _expected(spec, {output_key: expected})


def test_prediction_with_customized_signatures(address):
    """The counter model's stateful signatures, in upstream's order: get 0, incr 1, reset 0, incr 1 (with an output
    filter), incr_by 3 → 4."""
    steps = [("get_counter", None, [], 0.0), ("incr_counter", None, [], 1.0), ("reset_counter", None, [], 0.0),
             ("incr_counter", None, ["output"], 1.0), ("incr_counter_by", 3.0, [], 4.0)]
    for signature_name, delta, filters, expected in steps:
        def build(request, signature_name=signature_name, delta=delta, filters=filters):
            _spec(request, name="counter", signature_name=signature_name)
            request.output_filter.extend(filters)
            if delta is not None:
                request.inputs["delta"].CopyFrom(_float_tensor(delta))

        response = _predict(address, build)
        spec = {"name": "counter", "version": VERSION, "signature_name": signature_name}
        assert response == _expected(spec, {"output": expected}), signature_name

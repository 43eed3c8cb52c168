"""Property-based robustness: malformed requests on every protocol get a proper status, and the server lives on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from tests.conftest import start_server

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow

GRPC_OK = {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
"""Codes a client error may get; FAILED_PRECONDITION is TF Serving's answer to an unknown signature in Predict."""
HTTP_OK = {200, 400, 404, 413, 503}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

names = st.sampled_from(["digits", "two", "text", "", "nope", "a" * 300, "digits\x00", "../../etc"])
input_names = st.sampled_from(["image", "pixels", "meta", "tokens", "", "x" * 100, "image\n"])
dims = st.lists(st.one_of(st.integers(-3, 9), st.sampled_from([0, 64, 2**31, 2**40, 2**62])), min_size=0, max_size=5)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@pytest.fixture(scope="module")
def server(exported_repo):
    proc = start_server("--repository", exported_repo, "--max-message-mb", "1")
    yield proc
    assert proc.stop() == 0


def _alive(server) -> None:
    from tritonclient.grpc import InferenceServerClient, InferInput

    client = InferenceServerClient(server.grpc)
    tensor = InferInput("image", [1, 8, 8, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
    assert client.infer("digits", [tensor]).as_numpy("probabilities").shape == (1, 10)


@st.composite
def tensor_protos(draw):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from([0, 1, 2, 3, 6, 7, 9, 10, 19, 99])))
    for size in draw(dims):
        proto.tensor_shape.dim.add().size = size
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    kind = draw(st.sampled_from(["content", "float", "int", "none"]))
    if kind == "content":
        proto.tensor_content = draw(st.binary(max_size=3000))
    elif kind == "float":
        proto.float_val.extend(draw(st.lists(floats, max_size=300)))
    elif kind == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=100)))
    return proto


def test_tfserving_predict_fuzz(server):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    seen: set[str] = set()

    @FUZZ
    @given(name=names, inputs=st.dictionaries(input_names, tensor_protos(), max_size=3),
           signature=st.sampled_from(["", "serving_default", "other"]),
           version=st.one_of(st.none(), st.integers(-1, 3)),
           filters=st.lists(st.sampled_from(["probabilities", "zz"]), max_size=2))
    def check(name, inputs, signature, version, filters):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        request.output_filter.extend(filters)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value)
        try:
            stub.Predict(request, timeout=30)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        seen.add(code)
        assert code in GRPC_OK, code

    check()
    channel.close()
    assert "INVALID_ARGUMENT" in seen and "NOT_FOUND" in seen
    _alive(server)


def test_kserve_model_infer_fuzz(server):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    @FUZZ
    @given(name=names, version=st.sampled_from(["", "1", "2", "-1", "abc", "99999999999999999999"]),
           tensors=st.lists(st.tuples(input_names, st.sampled_from(["FP32", "FP64", "INT32", "BYTES", "", "FP16x"]),
                                      dims, st.one_of(st.none(), st.binary(max_size=2000)),
                                      st.lists(floats, max_size=200)), max_size=3),
           outputs=st.lists(st.sampled_from(["probabilities", "label", "??"]), max_size=2))
    def check(name, version, tensors, outputs):
        request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
        raw = [t[3] for t in tensors]
        for input_name, datatype, shape, _, values in tensors:
            clamped_shape = [max(-2**62, min(d, 2**62)) for d in shape]
            tensor = request.inputs.add(name=input_name, datatype=datatype, shape=clamped_shape)
            tensor.contents.fp32_contents.extend(values)
        if raw and all(r is not None for r in raw):
            request.raw_input_contents.extend(raw)
        for output in outputs:
            request.outputs.add(name=output)
        try:
            stub.ModelInfer(request, timeout=30)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        assert code in GRPC_OK, code

    check()
    channel.close()
    _alive(server)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), floats.map(float),
                                     st.text(max_size=5)),
                           lambda children: (st.lists(children, max_size=8)
                                             | st.dictionaries(st.text(max_size=6), children, max_size=3)),
                           max_leaves=60)


def test_rest_predict_fuzz(server):
    @FUZZ
    @given(path=st.sampled_from(["/v1/models/digits:predict", "/v1/models/two:predict", "/v1/models/x:predict",
                                 "/v1/models/digits/versions/7:predict", "/v1/models/digits/labels/a:predict",
                                 "/v1/models//:predict", "/v2/whatever"]),
           body=st.one_of(st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name", "x"]), json_values,
                                          max_size=3), json_values, st.binary(max_size=300).map(lambda b: b"\x00" + b)))
    def check(path, body):
        data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
        request = urllib.request.Request(f"http://{server.rest}{path}", data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
                json.loads(response.read())
        except urllib.error.HTTPError as error:
            status = error.code
            assert "error" in json.loads(error.read())
        assert status in HTTP_OK, status

    check()
    _alive(server)


@st.composite
def kserve_rest_bodies(draw):
    """A v2 inference body (JSON, maybe binary data after it) and its Inference-Header-Content-Length, or None."""
    inputs = []
    for _ in range(draw(st.integers(0, 3))):
        tensor = {"name": draw(input_names), "datatype": draw(st.sampled_from(["FP32", "INT32", "BYTES", "FP16",
                                                                               "BOOL", "", "BF16", 7])),
                  "shape": draw(st.one_of(dims, json_values))}
        if draw(st.booleans()):
            tensor["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-5, 3000), json_values))}
        else:
            tensor["data"] = draw(st.one_of(st.lists(floats.map(float), max_size=300), json_values))
        inputs.append(tensor)
    request = {"inputs": inputs}
    for key in ("outputs", "parameters", "id"):
        if draw(st.booleans()):
            request[key] = draw(json_values)
    header = json.dumps(request, allow_nan=True).encode()
    tail = draw(st.binary(max_size=3000))
    length = draw(st.sampled_from(["exact", "none", "zero", "long", "junk"]))
    value = {"exact": str(len(header)), "none": None, "zero": "0", "long": str(len(header) + len(tail) + 9),
             "junk": "12abc"}[length]
    return header + tail, value


def test_kserve_rest_infer_fuzz(server):
    import http.client

    @FUZZ
    @given(path=st.sampled_from(["/v2/models/digits/infer", "/v2/models/two/infer", "/v2/models/text/infer",
                                 "/v2/models/digits/versions/1/infer", "/v2/models/x/infer",
                                 "/v2/models/digits/versions/abc/infer", "/v2/models//infer", "/v2/zz"]),
           body=kserve_rest_bodies())
    def check(path, body):
        data, header_length = body
        connection = http.client.HTTPConnection(server.rest, timeout=30)
        headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
        connection.request("POST", path, body=data, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        connection.close()
        assert response.status in HTTP_OK, response.status
        if response.status != 200:
            assert "error" in json.loads(answer)

    check()
    assert "Traceback" not in server.log()
    _alive(server)

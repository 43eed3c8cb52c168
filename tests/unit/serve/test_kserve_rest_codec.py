"""The KServe v2 HTTP body codec (`kdeploy.wire.kserve_rest`): every datatype as JSON and as binary data, both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdeploy.contract.signature import DTYPES, STRING, TensorSpec
from kdeploy.wire.errors import ServeError
from kdeploy.wire.kserve_rest import (
    RestTensor,
    header_length_of,
    infer_request_body,
    infer_request_from_body,
    infer_response_body,
    ndarray_from_rest,
    outputs_from_response,
    raw_input_tensor,
)


def sample(dtype: str) -> np.ndarray:
    """A 2x3 array of the dtype with values near its limits."""
    if dtype == STRING:
        return np.array([[b"a", b"", "é".encode()], [b"x" * 40, b"the cat", b"0"]], dtype=object)
    if dtype == "bool":
        return np.array([[True, False, True], [False, False, True]])
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        return np.array([[0.5, -1.25, 3.0], [np.finfo(np_dtype).max, 0.0, -7.5]], np_dtype)
    info = np.iinfo(np_dtype)
    return np.array([[info.min, 0, 1], [info.max, 7, info.max - 1]], np_dtype)


@pytest.mark.parametrize("dtype", [d.name for d in DTYPES])
@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_goes_both_ways(dtype, binary):
    array = sample(dtype)
    spec = TensorSpec("t", dtype, (None, 3))
    body, length = infer_request_body({"t": array}, binary=binary)
    request = infer_request_from_body(body, length)
    decoded = ndarray_from_rest(request.inputs[0], spec)
    assert decoded.dtype == spec.np_dtype and decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)
    if not binary:  # JSON: FP16 as numbers, BYTES as strings, BOOL as true/false
        data = json.loads(body)["inputs"][0]["data"]
        kinds = {STRING: str, "bool": bool}
        assert all(isinstance(v, kinds.get(dtype, (int, float))) for v in data)
    response, response_length = infer_response_body("m", "1", None, {"t": decoded}, [binary])
    assert (response_length is not None) == binary
    out = outputs_from_response(response, response_length)["t"]
    assert out.dtype == spec.np_dtype
    np.testing.assert_array_equal(out, array)


def test_binary_tensors_are_views_of_the_body():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, length = infer_request_body({"t": array})
    decoded = ndarray_from_rest(infer_request_from_body(body, length).inputs[0], TensorSpec("t", "float32", (None, 4)))
    assert decoded.base is not None and not decoded.flags.owndata


def test_request_fields_are_read():
    body, length = infer_request_body({"t": np.zeros((1, 2), np.float32)}, binary=False, outputs=["a", "b"],
                                      binary_outputs=False, request_id="r1")
    request = infer_request_from_body(body, length)
    assert request.request_id == "r1" and request.outputs == ["a", "b"] and not request.wants_binary("a")
    request = infer_request_from_body(json.dumps({"inputs": [], "parameters": {"binary_data_output": True,
                                                                               "timeout": 1500}}).encode(), None)
    assert request.wants_binary("a") and request.timeout_us == 1500


@pytest.mark.parametrize("dtype, data, words", [
    ("int32", [1.5, 2, 3], "INT32 'data' must hold integers, got numbers with fractions"),
    ("int8", [1, 2, 300], "a value in 'data' does not fit INT8 (-128..127)"),
    ("uint8", [1, -1, 3], "does not fit UINT8"),
    ("bool", [1, 0, 1], "BOOL 'data' must hold true or false"),
    ("float32", [True, False, True], "FP32 'data' must hold numbers, got true/false"),
    ("float32", "abc", "FP32 'data' must hold numbers, got strings"),
    ("float32", [[1, 2], [3]], "'data' does not form a tensor"),
    ("float32", [{"b64": "AA=="}, 1, 2], "values of mixed or unsupported types"),
    ("int64", [2 ** 64, 1, 2], "INT64 'data' must hold integers"),
    (STRING, ["a", 1, "c"], "BYTES 'data' must hold strings, got int"),
    (STRING, ["a", "b"], "'data' has 2 strings; shape [1, 3] needs 3"),
])
def test_json_data_that_does_not_fit_is_refused(dtype, data, words):
    spec = TensorSpec("t", dtype, (None, 3))
    datatype = {d.name: d.kserve for d in DTYPES}[dtype]
    with pytest.raises(ServeError, match="input 't'") as error:
        ndarray_from_rest(RestTensor("t", datatype, (1, 3), data=data), spec)
    assert words in error.value.message


def test_uint64_beyond_int64_in_json():
    spec = TensorSpec("t", "uint64", (None, 2))
    array = ndarray_from_rest(RestTensor("t", "UINT64", (1, 2), data=[2 ** 64 - 1, 3]), spec)
    assert array.dtype == np.uint64 and array[0, 0] == 2 ** 64 - 1


@pytest.mark.parametrize("text, length", [(None, None), ("0", 0), (" 12 ", 12), ("40", 40)])
def test_header_length(text, length):
    assert header_length_of(text, 40) == length


@pytest.mark.parametrize("text", ["41", "-1", "abc", ""])
def test_bad_header_length(text):
    with pytest.raises(ServeError, match="Inference-Header-Content-Length"):
        header_length_of(text, 40)


@pytest.mark.parametrize("shape, size, dtype, expected", [
    ((None, 3), 12, "float32", (1, 3)),
    ((None, None), 20, "float32", (1, 5)),
    ((None, 2, None), 32, "float64", (1, 2, 2)),
    ((None,), 8, "int64", (1,)),
    ((None, 1), 5, STRING, (1, 1)),
])
def test_raw_input_shapes(shape, size, dtype, expected):
    tensor = raw_input_tensor(memoryview(b"\1" * size), TensorSpec("t", dtype, shape))
    assert tensor.shape == expected
    array = ndarray_from_rest(tensor, TensorSpec("t", dtype, shape))
    assert array.shape == expected
    if dtype == STRING:
        assert array[0, 0] == b"\1" * 5


@pytest.mark.parametrize("shape, size, dtype, words", [
    ((None, None, None), 8, "float32", "more than one variable dimension"),
    ((None, None), 10, "float32", "does not fill"),
    ((None, 3), 8, "float32", "the binary data has 8 bytes; shape [1, 3] of FP32 needs 12"),
    ((None, 2), 8, STRING, "sends one element"),
])
def test_raw_inputs_that_cannot_be_read(shape, size, dtype, words):
    with pytest.raises(ServeError) as error:
        spec = TensorSpec("t", dtype, shape)
        ndarray_from_rest(raw_input_tensor(memoryview(b"\0" * size), spec), spec)
    assert words in error.value.message


def test_a_bytes_output_that_is_not_text_must_be_binary():
    outputs = {"s": np.array([b"\xff\xfe"], dtype=object)}
    with pytest.raises(ServeError, match="not UTF-8 text"):
        infer_response_body("m", "1", None, outputs, [False])
    body, length = infer_response_body("m", "1", None, outputs, [True])
    assert outputs_from_response(body, length)["s"][0] == b"\xff\xfe"

import numpy as np
import pytest

from kdeploy.contract.signature import TensorSpec
from kdeploy.wire.errors import ErrorKind, ServeError
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import (
    fill_tensor_proto,
    json_value,
    ndarray_from_json,
    ndarray_from_kserve,
    ndarray_from_tensor_proto,
    raw_bytes,
)

PROTOS = load_protos()
TensorProto = PROTOS.cls("tensorflow.TensorProto")
SPEC = TensorSpec("x", "float32", (None, 3))


def proto(dtype: int, shape: list[int], **fields) -> object:
    message = TensorProto(dtype=dtype, **fields)
    for size in shape:
        message.tensor_shape.dim.add().size = size
    return message


def test_tensor_content_round_trip_for_every_dtype():
    for dtype in ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"):
        array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
        message = TensorProto()
        fill_tensor_proto(message, array)
        back = ndarray_from_tensor_proto("x", message, TensorSpec("x", dtype, (None, 3)))
        assert back.dtype == array.dtype and np.array_equal(back, array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"])
def test_typed_encoding_round_trip_for_every_dtype(dtype):
    array = (np.arange(6) % 3 - 1).astype(dtype).reshape(2, 3)
    message = TensorProto()
    fill_tensor_proto(message, array, "typed")
    assert message.tensor_content == b""  # the values are in the typed field, as TF Serving answers Predict
    back = ndarray_from_tensor_proto("x", message, TensorSpec("x", dtype, (None, 3)))
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_typed_encoding_uses_the_field_tensorflow_uses():
    message = TensorProto()
    fill_tensor_proto(message, np.array([[0.5, 1.5]], np.float32), "typed")
    assert list(message.float_val) == [0.5, 1.5] and [d.size for d in message.tensor_shape.dim] == [1, 2]
    message = TensorProto()
    fill_tensor_proto(message, np.array([[1.5]], np.float16), "typed")
    assert list(message.half_val) == [np.array(1.5, np.float16).view(np.uint16)]


def test_typed_values_repeat_the_last_one_and_empty_means_zeros():
    got = ndarray_from_tensor_proto("x", proto(1, [2, 3], float_val=[1.0, 2.0]), SPEC)
    assert got.tolist() == [[1, 2, 2], [2, 2, 2]]
    assert ndarray_from_tensor_proto("x", proto(1, [1, 3]), SPEC).tolist() == [[0, 0, 0]]
    half = np.array([1.5, -2.0], np.float16).view(np.uint16).astype(np.int32)
    half_spec = TensorSpec("h", "float16", (None, 2))
    got = ndarray_from_tensor_proto("h", proto(19, [1, 2], half_val=half.tolist()), half_spec)
    assert got.tolist() == [[1.5, -2.0]]


@pytest.mark.parametrize("message, words", [
    (proto(2, [1, 3], double_val=[1, 2, 3]), "expected dtype DT_FLOAT (float32), got DT_DOUBLE"),
    (proto(1, [1, 3], float_val=[1, 2, 3, 4]), "4 values in float_val for shape [1, 3]"),
    (proto(1, [2, 3], tensor_content=b"\0" * 8), "tensor_content has 8 bytes; shape [2, 3] of float32 needs 24"),
    (proto(1, [1, -3]), "negative dimension"),
])
def test_tensor_proto_errors_name_input_expectation_and_value(message, words):
    with pytest.raises(ServeError) as error:
        ndarray_from_tensor_proto("x", message, SPEC)
    assert error.value.kind is ErrorKind.INVALID_INPUT and words in error.value.message


def test_kserve_raw_and_typed():
    kserve_contents = PROTOS.cls("inference.InferTensorContents")
    raw = np.arange(6, dtype=np.float32).tobytes()
    assert ndarray_from_kserve("x", "FP32", [2, 3], None, raw, SPEC).shape == (2, 3)
    typed = kserve_contents(fp32_contents=[1, 2, 3])
    assert ndarray_from_kserve("x", "FP32", [1, 3], typed, None, SPEC).tolist() == [[1, 2, 3]]
    with pytest.raises(ServeError, match=r"2 values in contents\.fp32_contents; shape \[1, 3\] needs 3"):
        ndarray_from_kserve("x", "FP32", [1, 3], kserve_contents(fp32_contents=[1, 2]), None, SPEC)
    with pytest.raises(ServeError, match="expected datatype FP32, got INT64"):
        ndarray_from_kserve("x", "INT64", [1, 3], typed, None, SPEC)


def test_json_values_take_the_signature_dtype():
    assert ndarray_from_json("x", [[1, 2, 3]], SPEC).dtype == np.float32
    with pytest.raises(ServeError, match="input 'x': a JSON value is not of expected type: float"):
        ndarray_from_json("x", [[1, "a", 3]], SPEC)


def test_typed_values_that_do_not_fit_the_dtype():
    spec = TensorSpec("b", "int8", (None, 2))
    with pytest.raises(ServeError, match="a value in int_val does not fit int8"):
        ndarray_from_tensor_proto("b", proto(6, [1, 2], int_val=[1, 300]), spec)


STRINGS = TensorSpec("w", "string", (None, 2))


def test_strings_in_every_wire_format():
    words = np.array([[b"cat", "d\u00f6g".encode()], [b"", b"\xff\x00"]], dtype=object)
    message = TensorProto()
    fill_tensor_proto(message, words, "content")  # strings always go in string_val, as TensorFlow puts them
    assert message.dtype == 7 and list(message.string_val) == list(words.ravel()) and not message.tensor_content
    assert ndarray_from_tensor_proto("w", message, STRINGS).tolist() == words.tolist()
    raw = raw_bytes(words)
    assert raw[:7] == b"\x03\x00\x00\x00cat"  # Triton's BYTES layout: 4-byte little-endian length, then the bytes
    assert ndarray_from_kserve("w", "BYTES", [2, 2], None, raw, STRINGS).tolist() == words.tolist()
    typed = PROTOS.cls("inference.InferTensorContents")(bytes_contents=list(words.ravel()))
    assert ndarray_from_kserve("w", "BYTES", [2, 2], typed, None, STRINGS).tolist() == words.tolist()
    from_json = ndarray_from_json("w", [["cat", "d\u00f6g"], ["", {"b64": "/wA="}]], STRINGS)
    assert from_json.tolist() == words.tolist()
    assert json_value(words) == [["cat", "d\u00f6g"], ["", {"b64": "/wA="}]]


@pytest.mark.parametrize("call, words", [
    (lambda: ndarray_from_kserve("w", "BYTES", [1, 2], None, b"\x05\x00\x00\x00ab", STRINGS), "runs past the end"),
    (lambda: ndarray_from_kserve("w", "BYTES", [1, 2], None, b"\x01\x00", STRINGS), "4-byte length"),
    (lambda: ndarray_from_kserve("w", "BYTES", [1, 2], None, b"\x01\x00\x00\x00a", STRINGS),
     "1 strings in raw_input_contents; shape [1, 2] needs 2"),
    (lambda: ndarray_from_json("w", [[1, 2]], STRINGS), "expected strings"),
    (lambda: ndarray_from_json("w", [["a"], ["b", "c"]], STRINGS), "do not form a tensor"),
])
def test_string_errors_name_the_input(call, words):
    with pytest.raises(ServeError) as error:
        call()
    assert error.value.kind is ErrorKind.INVALID_INPUT and "input 'w'" in error.value.message
    assert words in error.value.message


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 40])  # 3 values (read one by one) and 120 (read from the wire bytes)
def test_long_typed_floats_read_from_the_wire_bytes_exactly(dtype, rows):
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-38, -3.5, 1 / 3] * 15, dtype)[:rows * 3]
    values = values.reshape(rows, 3)
    field = "float_val" if dtype == "float32" else "double_val"
    message = proto(1 if dtype == "float32" else 2, [rows, 3], **{field: values.ravel().tolist()})
    back = ndarray_from_tensor_proto("x", message, TensorSpec("x", dtype, (None, 3)))
    assert back.dtype == values.dtype and back.tobytes() == values.tobytes()  # NaN and -0.0 bit for bit
    contents = PROTOS.cls("inference.InferTensorContents")(
        **{("fp32_contents" if dtype == "float32" else "fp64_contents"): values.ravel().tolist()})
    back = ndarray_from_kserve("x", "FP32" if dtype == "float32" else "FP64", [rows, 3], contents, None,
                               TensorSpec("x", dtype, (None, 3)))
    assert back.tobytes() == values.tobytes()


def test_long_typed_floats_still_repeat_their_last_value():
    message = proto(1, [40, 3], float_val=[float(v) for v in range(100)])
    back = ndarray_from_tensor_proto("x", message, SPEC)
    assert back.shape == (40, 3) and back.ravel()[99] == 99 and (back.ravel()[100:] == 99).all()


def test_packed_values_refuses_what_is_not_one_packed_run():
    from kdeploy.wire.packed import packed_values

    message = proto(1, [2], float_val=[1.0, 2.0])
    assert packed_values(message, 5, np.dtype(np.float32)).tolist() == [1.0, 2.0]
    assert packed_values(message, 6, np.dtype(np.float64)) is None  # absent
    assert packed_values(proto(1, [2], double_val=[1.0]), 6, np.dtype(np.float32)) is not None
    assert packed_values(proto(1, [1], double_val=[1.0, 2.0, 3.0]), 6, np.dtype("f4")).size == 6  # 24 bytes / 4

    class Wire:  # a message as another encoder may write it: the field unpacked, or split into two runs
        def __init__(self, data: bytes) -> None:
            self.data = data

        def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
            return self.data

    one = np.float32(1).tobytes()
    assert packed_values(Wire(b"\x2d" + one + b"\x2d" + one), 5, np.dtype(np.float32)) is None
    assert packed_values(Wire(b"\x2a\x04" + one + b"\x2a\x04" + one), 5, np.dtype(np.float32)) is None
    assert packed_values(Wire(b"\x2a\x05" + one + b"\x00"), 5, np.dtype(np.float32)) is None  # not whole floats


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_long_typed_outputs_are_the_messages_extend_would_write(dtype):
    values = np.linspace(-1, 1, 300).astype(dtype).reshape(100, 3)
    message = TensorProto()
    fill_tensor_proto(message, values, encoding="typed")
    expected = TensorProto(dtype=message.dtype, tensor_shape=message.tensor_shape,
                           **{"float_val" if dtype == "float32" else "double_val": values.ravel().tolist()})
    assert message.SerializeToString() == expected.SerializeToString()

"""Tensors on the wire and as NumPy arrays: TF Serving's TensorProto, KServe v2's tensors, TF Serving's JSON.

Every decoder checks the element type and size against the signature's `TensorSpec` and raises an
INVALID_INPUT `ServeError` naming the input, what was expected and what came. Encoders write KServe's
`raw_output_contents` and a TensorProto's `tensor_content` or typed field (`fill_tensor_proto`'s `encoding`);
strings go in `string_val` and, for KServe, as 4-byte-length-prefixed BYTES.
"""

from __future__ import annotations

import base64
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdeploy.contract.signature import DTYPES, STRING, DType, TensorSpec, dtype_by_name, format_shape
from kdeploy.wire.errors import ErrorKind, ServeError, invalid
from kdeploy.wire.packed import PACKED_MIN_VALUES, add_packed_values, packed_values

_BY_TF_ENUM: dict[int, DType] = {d.tf_enum: d for d in DTYPES}
_KSERVE_NAMES: dict[str, str] = {d.name: d.kserve for d in DTYPES}
LITTLE_ENDIAN: dict[str, np.dtype] = {d.name: d.numpy.newbyteorder("<") for d in DTYPES if d.name != STRING}
"""The wire's byte order for each numeric dtype (made once: `newbyteorder` builds a new dtype per call)."""
_NATIVE_ORDER = "=" if sys.byteorder == "little" else "<"
"""A dtype byte order that already is little-endian ("=" native, on a little-endian machine)."""
_TF_ENUM_NAMES: dict[int, str] = {
    1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16", 6: "DT_INT8", 7: "DT_STRING",
    9: "DT_INT64", 10: "DT_BOOL", 17: "DT_UINT16", 19: "DT_HALF", 22: "DT_UINT32", 23: "DT_UINT64",
}

# TensorProto's typed field for each dtype (TF stores int8/16 and uint8/16 in int_val, half as bits in half_val).
_TF_TYPED_FIELD: dict[str, str] = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "bool": "bool_val", "float16": "half_val",
    "uint32": "uint32_val", "uint64": "uint64_val",
}
# Field numbers of the fixed-width typed fields, read straight from the serialized message (see wire/packed.py).
_TF_PACKED_FIELD: dict[str, int] = {"float32": 5, "float64": 6}
_KSERVE_PACKED_FIELD: dict[str, int] = {"float32": 6, "float64": 7}
# KServe v2's typed contents field for each dtype.
_KSERVE_TYPED_FIELD: dict[str, str] = {
    "bool": "bool_contents", "int8": "int_contents", "int16": "int_contents", "int32": "int_contents",
    "int64": "int64_contents", "uint8": "uint_contents", "uint16": "uint_contents", "uint32": "uint_contents",
    "uint64": "uint64_contents", "float32": "fp32_contents", "float64": "fp64_contents",
}


_TF_TYPE_NAMES: dict[str, str] = {
    "float16": "half", "float32": "float", "float64": "double", "int8": "int8", "int16": "int16", "int32": "int32",
    "int64": "int64", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    STRING: "string",
}
"""TensorFlow's own names of the dtypes (DataTypeString), as TF Serving's JSON errors say them."""


def tf_dtype_name(enum_value: int) -> str:
    return _TF_ENUM_NAMES.get(enum_value, f"DataType({enum_value})")


def _elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # Python integers: absurd dimensions must not overflow into a small number


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A wire shape (a list or protobuf's repeated int64) as a tuple, refusing negative dimensions."""
    dims = tuple(shape)
    if dims and min(dims) < 0:
        raise invalid(f"input {name!r}: shape {list(dims)} has a negative dimension")
    return dims


def ndarray_from_tensor_proto(name: str, proto: Any, spec: TensorSpec, max_bytes: int | None = None) -> np.ndarray:
    """A TensorProto as an array of the spec's dtype.

    Accepts `tensor_content` bytes or the typed `*_val` field. As in TensorFlow, a typed list shorter than the
    shape repeats its last value, and an empty list means zeros; `max_bytes` caps what that expansion may
    allocate (a tiny message can describe a huge tensor).
    """
    want = _BY_TF_ENUM.get(proto.dtype)
    if want is None or want.name != spec.dtype:
        wanted = tf_dtype_name(dtype_by_name(spec.dtype).tf_enum)
        raise invalid(f"input {name!r}: expected dtype {wanted} ({spec.dtype}), got {tf_dtype_name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input {name!r}: expected shape {format_shape(spec.shape)}, got a tensor of unknown rank")
    # Shapes are the service's to check (or the graph's: a SavedModel is fed as TF Serving feeds it).
    shape = check_shape(name, [d.size for d in proto.tensor_shape.dim])
    count = _elements(shape)
    if spec.is_string:
        return _strings_from_values(name, list(proto.string_val), shape, count, "string_val", repeat=True)
    dtype = want.numpy
    if max_bytes is not None and count * dtype.itemsize > max_bytes:
        raise ServeError(ErrorKind.TOO_LARGE,
                         f"input {name!r}: shape {list(shape)} of {spec.dtype} is {count * dtype.itemsize} bytes, "
                         f"over this server's limit of {max_bytes}")
    if proto.tensor_content:
        expected = count * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise invalid(f"input {name!r}: tensor_content has {len(proto.tensor_content)} bytes; shape "
                          f"{list(shape)} of {spec.dtype} needs {expected}")
        return np.frombuffer(proto.tensor_content, dtype=LITTLE_ENDIAN[spec.dtype]).reshape(shape)
    values = getattr(proto, _TF_TYPED_FIELD[spec.dtype])
    given = len(values)
    if given > count:
        raise invalid(f"input {name!r}: {given} values in {_TF_TYPED_FIELD[spec.dtype]} for shape {list(shape)} "
                      f"({count} elements)")
    flat = _packed(proto, _TF_PACKED_FIELD.get(spec.dtype), dtype, given)
    if flat is None:
        # fromiter with a count is about twice as fast as asarray on protobuf's repeated containers.
        try:
            if spec.dtype == "float16":
                flat = np.fromiter(values, dtype=np.int32, count=given).astype(np.uint16).view(np.float16)
            else:
                flat = np.fromiter(values, dtype=dtype, count=given)
        except (OverflowError, ValueError):
            raise invalid(f"input {name!r}: a value in {_TF_TYPED_FIELD[spec.dtype]} does not fit "
                          f"{spec.dtype}") from None
    if given < count:
        fill = flat[-1] if given else np.zeros((), dtype=dtype)
        flat = np.concatenate([flat, np.full(count - given, fill, dtype=dtype)])
    return flat.reshape(shape)


TENSOR_ENCODINGS: tuple[str, ...] = ("typed", "content")
"""How a TensorProto carries its values: the typed `*_val` field (TF Serving's default for Predict responses,
`kAsProtoField`, which its example clients read as `outputs[...].float_val`) or `tensor_content` bytes."""


def fill_tensor_proto(proto: Any, array: np.ndarray, encoding: str = "content") -> None:
    """Write an array into a TensorProto: dtype, shape, and the values as `tensor_content` or the typed field."""
    array = np.require(array, requirements="C")  # not ascontiguousarray: it makes a scalar one-dimensional
    dtype = _dtype_of(array)
    proto.dtype = dtype.tf_enum
    proto.tensor_shape.SetInParent()  # a scalar's shape is present and empty, as TensorFlow writes it
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if dtype.name == STRING:  # TensorFlow never puts strings in tensor_content
        proto.string_val.extend(_as_bytes(v) for v in array.ravel())
        return
    if encoding == "content":
        proto.tensor_content = raw_bytes(array)
        return
    flat = array.ravel()
    if dtype.name in _TF_PACKED_FIELD and flat.size >= PACKED_MIN_VALUES:
        add_packed_values(proto, _TF_PACKED_FIELD[dtype.name], flat)
        return
    if dtype.name == "float16":  # TensorFlow keeps half floats as their bits in half_val
        flat = flat.view(np.uint16).astype(np.int32)
    getattr(proto, _TF_TYPED_FIELD[dtype.name]).extend(flat.tolist())


def ndarray_from_kserve(name: str, datatype: str, shape: Sequence[int], contents: Any, raw: bytes | None,
                        spec: TensorSpec, raw_field: str = "raw_input_contents") -> np.ndarray:
    """A KServe v2 input tensor (raw bytes or typed contents) as an array of the spec's dtype.

    `raw_field` names where the raw bytes came from in error messages (gRPC's `raw_input_contents`, or the binary
    tensor extension's data over HTTP).
    """
    little_endian = LITTLE_ENDIAN.get(spec.dtype)
    if raw is not None and little_endian is not None and datatype == _KSERVE_NAMES[spec.dtype]:
        # The common case, checked in as few steps as it takes (every other case, and every error, below).
        dims = tuple(shape)
        if len(raw) == math.prod(dims) * little_endian.itemsize and (not dims or min(dims) >= 0):
            return np.frombuffer(raw, little_endian).reshape(dims)
    want = dtype_by_name(spec.dtype)
    if datatype != want.kserve:
        raise invalid(f"input {name!r}: expected datatype {want.kserve}, got {datatype or 'none'}")
    shape_t = check_shape(name, shape)
    count = _elements(shape_t)
    if spec.is_string:
        values = split_length_prefixed(name, raw, raw_field) if raw is not None else list(contents.bytes_contents)
        return _strings_from_values(name, values, shape_t, count,
                                    raw_field if raw is not None else "contents.bytes_contents")
    if raw is not None:
        expected = count * want.numpy.itemsize
        if len(raw) != expected:
            raise invalid(f"input {name!r}: {raw_field} has {len(raw)} bytes; shape {list(shape_t)} of "
                          f"{want.kserve} needs {expected}")
        return np.frombuffer(raw, dtype=LITTLE_ENDIAN[spec.dtype]).reshape(shape_t)
    field_name = _KSERVE_TYPED_FIELD.get(spec.dtype)
    if field_name is None or contents is None:
        raise invalid(f"input {name!r}: {want.kserve} tensors must be sent in raw_input_contents")
    values = getattr(contents, field_name)
    if len(values) != count:
        raise invalid(f"input {name!r}: {len(values)} values in contents.{field_name}; "
                      f"shape {list(shape_t)} needs {count}")
    flat = _packed(contents, _KSERVE_PACKED_FIELD.get(spec.dtype), want.numpy, count)
    return (flat if flat is not None else np.asarray(values, dtype=want.numpy)).reshape(shape_t)


def _packed(message: Any, field_number: int | None, dtype: np.dtype, given: int) -> np.ndarray | None:
    """A long fixed-width typed field read from the wire bytes (None: read it value by value)."""
    if field_number is None or given < PACKED_MIN_VALUES:
        return None
    flat = packed_values(message, field_number, dtype)
    return flat if flat is not None and flat.size == given else None


def kserve_datatype(array: np.ndarray) -> str:
    return _dtype_of(array).kserve


def raw_bytes(array: np.ndarray) -> bytes:
    """Little-endian, C-ordered bytes of an array (KServe v2's raw_output_contents); for BYTES tensors each
    element is its length as 4 little-endian bytes followed by its bytes, as Triton serialises them."""
    array = np.ascontiguousarray(array)
    if array.dtype == object:
        return b"".join(len(b).to_bytes(4, "little") + b for b in map(_as_bytes, array.ravel()))
    if array.dtype.byteorder == "|" or array.dtype.byteorder == _NATIVE_ORDER:
        return array.tobytes()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def split_length_prefixed(name: str, raw: bytes | memoryview, field: str = "raw_input_contents",
                          role: str = "input") -> list[bytes]:
    """BYTES elements as the v2 protocol packs them in raw or binary data: each a 4-byte little-endian length and
    the bytes.

    Raises:
        ServeError: INVALID_INPUT when the data ends inside an element, naming the tensor and the field.
    """
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid(f"{role} {name!r}: {field} ends inside a BYTES element's 4-byte length")
        length = int.from_bytes(raw[offset:offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise invalid(f"{role} {name!r}: a BYTES element of {length} bytes runs past the end of {field}")
        values.append(bytes(raw[offset:offset + length]))
        offset += length
    return values


def _strings_from_values(name: str, values: list[bytes], shape: tuple[int, ...], count: int, field: str,
                         repeat: bool = False) -> np.ndarray:
    """An object array of bytes; with `repeat` (TensorProto's rule) a short list repeats its last value."""
    if len(values) > count or (len(values) < count and not (repeat and values)):
        raise invalid(f"input {name!r}: {len(values)} strings in {field}; shape {list(shape)} needs {count}")
    flat = np.empty(count, dtype=object)
    flat[:len(values)] = values
    if len(values) < count:
        flat[len(values):] = values[-1]
    return flat.reshape(shape)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def json_value(array: np.ndarray) -> Any:
    """An output as JSON: numbers as lists; strings as UTF-8 text, or TF Serving's `{"b64": ...}` when not text."""
    array = np.asarray(array, dtype=object if isinstance(array, bytes | str) else None)
    if array.dtype != object:
        return array.tolist()

    def text(value: Any) -> Any:
        raw = _as_bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(raw).decode("ascii")}

    return np.vectorize(text, otypes=[object])(array).tolist()


def ndarray_from_json(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    """A JSON value (nested lists of numbers, or of strings for string inputs) as an array of the spec's dtype."""
    if spec.is_string:
        return _strings_from_json(name, value)
    try:
        array = np.asarray(value, dtype=spec.np_dtype)
    except (TypeError, ValueError) as exc:
        raise invalid(f"input {name!r}: a JSON value is not of expected type: {_TF_TYPE_NAMES[spec.dtype]} "
                      f"({spec.dtype}, shape {format_shape(spec.shape)}): {exc}") from None
    return array


def _strings_from_json(name: str, value: Any) -> np.ndarray:
    """Nested lists of strings (UTF-8) or TF Serving's `{"b64": "..."}` objects as an object array of bytes."""
    def leaf(item: Any) -> bytes:
        if isinstance(item, str):
            return item.encode("utf-8")
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except ValueError:
                raise invalid(f"input {name!r}: a b64 value is not base64") from None
        raise invalid(f"input {name!r}: expected strings (or {{\"b64\": ...}}), got {type(item).__name__}")

    def walk(item: Any) -> Any:
        return [walk(i) for i in item] if isinstance(item, list) else leaf(item)

    try:
        array = np.array(walk(value), dtype=object)
    except ValueError:
        array = None
    if array is None or any(isinstance(item, list) for item in array.ravel()):  # ragged lists
        raise invalid(f"input {name!r}: the strings do not form a tensor (rows of different lengths)")
    return array


_BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in DTYPES}


def _dtype_of(array: np.ndarray) -> DType:
    dtype = _BY_NUMPY.get(array.dtype)
    if dtype is None:
        raise TypeError(f"no wire dtype for {array.dtype}")
    return dtype

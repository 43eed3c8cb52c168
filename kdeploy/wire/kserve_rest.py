"""KServe v2 (Open Inference Protocol) over HTTP: inference bodies as JSON, with Triton's binary tensor extension.

A body is a JSON object, optionally followed by binary tensor data: the `Inference-Header-Content-Length` header
gives the JSON's length, and each binary tensor says its size in `parameters.binary_data_size`, in the order of the
tensors in the JSON. Binary data is little-endian and row-major; a BYTES element is its length as 4 little-endian
bytes followed by its bytes. A header length of 0 means the whole body is the data of a model's only input (the "raw
binary request"). Outputs come back as JSON, or as binary data when the request asks (`binary_data` per output,
`binary_data_output` for every output).

The server (`kdeploy.serve.adapters.kserve_rest`) and the clients (`kdeploy.wire.clients`, the load generator's
payloads) both use this module: the request side decodes with `infer_request_from_body` and encodes with
`infer_response_body`; the client side mirrors them with `infer_request_body` and `outputs_from_response`. Binary
tensors become arrays with `np.frombuffer` over the body, without a copy and without a loop over elements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdeploy.contract.signature import STRING, TensorSpec, dtype_by_kserve, dtype_by_name, format_shape
from kdeploy.wire.errors import invalid
from kdeploy.wire.tensors import (
    LITTLE_ENDIAN,
    check_shape,
    kserve_datatype,
    ndarray_from_kserve,
    raw_bytes,
    split_length_prefixed,
)

INFERENCE_HEADER = "Inference-Header-Content-Length"
"""The HTTP header that gives the JSON part's length when binary tensor data follows it."""
BINARY_EXTENSION = "binary_tensor_data"
"""The extension's name in the server metadata (as Triton lists it)."""
BINARY_FIELD = "the binary data"
"""How error messages name the bytes of a binary tensor."""

_INTEGER_KINDS = "iu"


@dataclass(frozen=True, slots=True)
class RestTensor:
    """One input tensor of a request: JSON `data`, or the binary extension's bytes in `raw`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    raw: memoryview | None = None


@dataclass(frozen=True, slots=True)
class RestInferRequest:
    """An inference request as sent: tensors still encoded, output choices as asked."""

    inputs: list[RestTensor]
    request_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    """Requested outputs by name (empty: every output)."""
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    """Requested outputs that said `binary_data`."""
    binary_default: bool = False
    """`binary_data_output`: outputs that say nothing come back as binary data."""
    timeout_us: int | None = None
    """The request's `timeout` parameter (microseconds), as tritonclient sends it."""
    raw_input: memoryview | None = None
    """The whole body of a raw binary request (header length 0): the data of the model's only input."""

    def wants_binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_default)


def header_length_of(text: str | None, body_length: int) -> int | None:
    """The JSON part's length from `Inference-Header-Content-Length` (None: the whole body is JSON).

    Raises:
        ServeError: INVALID_INPUT when the value is not a number or is longer than the body.
    """
    if text is None:
        return None
    try:
        length = int(text.strip())
    except ValueError:
        raise invalid(f"{INFERENCE_HEADER} must be a number of bytes, got {text[:40]!r}") from None
    if length < 0 or length > body_length:
        raise invalid(f"{INFERENCE_HEADER} is {length}, but the body has {body_length} bytes")
    return length


def json_object(data: bytes | memoryview, what: str = "the request body") -> dict[str, Any]:
    """Parse a JSON object (an error for anything else).

    Raises:
        ServeError: INVALID_INPUT naming what was not JSON.
    """
    try:
        value = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def infer_request_from_body(body: bytes, header_length: int | None) -> RestInferRequest:
    """Split an inference body into its JSON request and the binary data each input points at.

    Raises:
        ServeError: INVALID_INPUT for a body that is not a v2 inference request, or whose binary sizes do not add up.
    """
    view = memoryview(body)
    if header_length == 0:
        return RestInferRequest(inputs=[], binary_default=True, raw_input=view)
    if header_length is None:
        header_length = len(body)
    request = json_object(view[:header_length], "the inference request")
    binary = view[header_length:]
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list):
        raise invalid("the inference request needs 'inputs', a list of tensors")
    offset = 0
    inputs = []
    for index, item in enumerate(inputs_json):
        tensor, size = _tensor_from_json(item, index)
        if size is not None:
            if offset + size > len(binary):
                raise invalid(f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body "
                              f"({len(binary) - offset} bytes of binary data left)")
            tensor = RestTensor(tensor.name, tensor.datatype, tensor.shape, raw=binary[offset:offset + size])
            offset += size
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"the body has {len(binary) - offset} bytes of binary data after the inputs' binary_data_size "
                      f"(its JSON part is {header_length} bytes, as {INFERENCE_HEADER} says)")
    parameters = _parameters(request.get("parameters"), "the request's")
    outputs, binary_outputs = _requested_outputs(request.get("outputs"))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid(f"'id' must be a string, got {type(request_id).__name__}")
    return RestInferRequest(inputs=inputs, request_id=request_id, outputs=outputs, binary_outputs=binary_outputs,
                            binary_default=_flag(parameters, "binary_data_output"),
                            timeout_us=_timeout(parameters))


def _tensor_from_json(item: Any, index: int) -> tuple[RestTensor, int | None]:
    if not isinstance(item, dict):
        raise invalid(f"inputs[{index}] must be an object with name, datatype, shape and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise invalid(f"inputs[{index}] needs a 'name' string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise invalid(f"input {name!r} needs a 'datatype' string (FP32, INT64, BYTES, ...)")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid(f"input {name!r} needs a 'shape', a list of integers")
    dims = check_shape(name, shape)
    parameters = _parameters(item.get("parameters"), f"input {name!r}'s")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be a number of bytes, got {size!r}")
        return RestTensor(name, datatype, dims), size
    if "data" not in item:
        raise invalid(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return RestTensor(name, datatype, dims, data=item["data"]), None


def _parameters(value: Any, whose: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{whose} 'parameters' must be an object")
    return value


def _flag(parameters: Mapping[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise invalid(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def _timeout(parameters: Mapping[str, Any]) -> int | None:
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"parameter 'timeout' must be a number of microseconds, got {value!r}")
    return value or None  # 0: no timeout, as Triton reads it


def _requested_outputs(value: Any) -> tuple[list[str], dict[str, bool]]:
    if value is None:
        return [], {}
    if not isinstance(value, list):
        raise invalid("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise invalid(f"outputs[{index}] needs a 'name' string")
        parameters = _parameters(item.get("parameters"), f"output {name!r}'s")
        if "binary_data" in parameters:
            binary[name] = _flag(parameters, "binary_data")
        names.append(name)
    return names, binary


def ndarray_from_rest(tensor: RestTensor, spec: TensorSpec) -> np.ndarray:
    """A request tensor as an array of the spec's dtype, checked against the spec's datatype and shape.

    Raises:
        ServeError: INVALID_INPUT naming the input, what was expected and what came.
    """
    if tensor.raw is not None:
        raw = bytes(tensor.raw) if spec.is_string else tensor.raw
        return ndarray_from_kserve(tensor.name, tensor.datatype, tensor.shape, None, raw, spec,  # type: ignore[arg-type]
                                   raw_field=BINARY_FIELD)
    want = dtype_by_name(spec.dtype).kserve
    if tensor.datatype != want:
        raise invalid(f"input {tensor.name!r}: expected datatype {want}, got {tensor.datatype or 'none'}")
    # Shapes are the service's to check (or the graph's: a SavedModel is fed as TF Serving feeds it).
    count = math.prod(tensor.shape)
    flat = _strings_from_json(tensor, count) if spec.is_string else _numbers_from_json(tensor, spec, count)
    return flat.reshape(tensor.shape)


def _numbers_from_json(tensor: RestTensor, spec: TensorSpec, count: int) -> np.ndarray:
    """JSON numbers (flat or nested) as a flat array; no silent truncation, wrap-around or string parsing."""
    name, target = tensor.name, spec.np_dtype
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise invalid(f"input {name!r}: 'data' does not form a tensor (nested lists of different lengths)") from None
    kind = values.dtype.kind
    if target.kind == "b":
        ok = kind == "b" or values.size == 0
        expected = "true or false"
    elif target.kind in _INTEGER_KINDS:
        if kind not in _INTEGER_KINDS and values.size:
            # NumPy reads integers past int64's range as floats (or objects): a UINT64 tensor may hold such values.
            values = _big_integers(tensor.data, values)
            kind = values.dtype.kind
        ok = kind in _INTEGER_KINDS or values.size == 0
        expected = "integers"
    else:
        ok = kind in "iuf" or values.size == 0
        expected = "numbers"
    if not ok:
        raise invalid(f"input {name!r}: {tensor.datatype} 'data' must hold {expected}, got "
                      f"{_describe(values)}")
    if values.size != count:
        raise invalid(f"input {name!r}: 'data' has {values.size} values; shape {list(tensor.shape)} needs {count}")
    if target.kind in _INTEGER_KINDS and count:
        info = np.iinfo(target)
        if values.min() < info.min or values.max() > info.max:
            raise invalid(f"input {name!r}: a value in 'data' does not fit {tensor.datatype} "
                          f"({info.min}..{info.max})")
    return values.astype(target, copy=False).reshape(-1)


def _big_integers(data: Any, values: np.ndarray) -> np.ndarray:
    """`data` as uint64 when every value is a Python integer in uint64's range, else `values` unchanged."""
    leaves = np.array(data, dtype=object).reshape(-1)
    if all(type(v) is int and 0 <= v < 1 << 64 for v in leaves):
        return leaves.astype(np.uint64)
    return values


def _describe(values: np.ndarray) -> str:
    if values.dtype.kind in "US":
        return "strings"
    if values.dtype.kind == "b":
        return "true/false"
    if values.dtype.kind == "f":
        return "numbers with fractions"
    return "values of mixed or unsupported types"


def _strings_from_json(tensor: RestTensor, count: int) -> np.ndarray:
    """JSON strings (flat or nested) as a flat object array of UTF-8 bytes, as tritonclient sends BYTES in JSON."""
    flat: list[bytes] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for child in item:
                walk(child)
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise invalid(f"input {tensor.name!r}: BYTES 'data' must hold strings, got {type(item).__name__}")

    walk(tensor.data)
    if len(flat) != count:
        raise invalid(f"input {tensor.name!r}: 'data' has {len(flat)} strings; shape {list(tensor.shape)} "
                      f"needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = flat
    return array


def raw_input_tensor(raw: memoryview, spec: TensorSpec) -> RestTensor:
    """A raw binary request's body as the model's only input: one row, the shape taken from the spec, with at most
    one more variable dimension worked out from the byte count (Triton's rule). A BYTES input must hold one element.

    Raises:
        ServeError: INVALID_INPUT when the shape cannot be worked out.
    """
    kserve = dtype_by_name(spec.dtype).kserve
    dims = list(spec.shape)
    if dims and dims[0] is None:
        dims[0] = 1
    free = [i for i, d in enumerate(dims) if d is None]
    if spec.is_string:
        if free or math.prod(d for d in dims if d is not None) != 1:
            raise invalid(f"a raw binary request sends one element; input {spec.name!r} has shape "
                          f"{format_shape(spec.shape)}: send a JSON inference request")
        element = bytes(raw)
        return RestTensor(spec.name, kserve, tuple(d or 1 for d in dims),
                          raw=memoryview(len(element).to_bytes(4, "little") + element))
    if len(free) > 1:
        raise invalid(f"input {spec.name!r} has shape {format_shape(spec.shape)}, more than one variable dimension "
                      "besides the batch: a raw binary request cannot say it; send a JSON inference request")
    if free:
        known = math.prod(d for d in dims if d is not None) * LITTLE_ENDIAN[spec.dtype].itemsize
        if known == 0 or len(raw) % known:
            raise invalid(f"input {spec.name!r}: a raw body of {len(raw)} bytes does not fill shape "
                          f"{format_shape(spec.shape)} of {kserve}")
        dims[free[0]] = len(raw) // known
    return RestTensor(spec.name, kserve, tuple(int(d) for d in dims if d is not None), raw=raw)


def infer_response_body(model_name: str, model_version: str, request_id: str | None,
                        outputs: Mapping[str, np.ndarray], binary: Sequence[bool]) -> tuple[bytes, int | None]:
    """An inference response: the JSON object, then the binary data of the outputs sent as binary, in order.

    Args:
        model_name: the model that answered.
        model_version: the version that answered.
        request_id: the request's `id`, echoed when given.
        outputs: the outputs to send, in order.
        binary: for each output, whether it goes as binary data.

    Returns:
        The body and the JSON part's length for `Inference-Header-Content-Length` (None: no binary data).

    Raises:
        ServeError: INVALID_INPUT for a BYTES output that is not UTF-8 text and was not asked for as binary data.
    """
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"], chunks = _tensors(outputs, binary)
    return _body(response, chunks)


def _tensors(arrays: Mapping[str, np.ndarray], binary: Sequence[bool]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Tensor objects for `arrays`, each with its data as JSON or, where `binary` says so, as binary data (returned
    in order, to follow the JSON)."""
    tensors, chunks = [], []
    for (name, array), as_binary in zip(arrays.items(), binary):
        tensor: dict[str, Any] = {"name": name, "datatype": kserve_datatype(array), "shape": list(array.shape)}
        if as_binary:
            data = raw_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = _json_data(name, array)
        tensors.append(tensor)
    return tensors, chunks


def _body(message: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    """The JSON of `message` followed by the binary chunks, and the JSON's length (None: JSON only)."""
    header = json.dumps(message, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _json_data(name: str, array: np.ndarray) -> list[Any]:
    """An output's values as a flat JSON list (row-major); BYTES as UTF-8 strings."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype != object:
        return flat.tolist()
    try:
        return [(v if isinstance(v, bytes) else str(v).encode()).decode("utf-8") for v in flat]
    except UnicodeDecodeError:
        raise invalid(f"output {name!r} holds bytes that are not UTF-8 text, which JSON cannot carry; ask for it "
                      "with parameters.binary_data: true") from None


# The client's side.

def model_path(model: str, version: int | None) -> str:
    """`/v2/models/NAME[/versions/V]`: a model's metadata; its readiness, inference and statistics below it."""
    return f"/v2/models/{model}" + ("" if version is None else f"/versions/{version}")


def infer_request_body(feed: Mapping[str, np.ndarray], binary: bool = True, outputs: Sequence[str] = (),
                       binary_outputs: bool = True, request_id: str | None = None) -> tuple[bytes, int | None]:
    """An inference request for `feed`, its tensors as binary data (`binary`) or JSON.

    Args:
        feed: the inputs by name.
        binary: send the tensors as binary data after the JSON (else as JSON `data`).
        outputs: the outputs to ask for (default: every output).
        binary_outputs: ask for the outputs as binary data.
        request_id: an `id` for the request.

    Returns:
        The body and the value of `Inference-Header-Content-Length` (None: the body is JSON only).
    """
    request: dict[str, Any] = {}
    if request_id is not None:
        request["id"] = request_id
    request["inputs"], chunks = _tensors(feed, [binary] * len(feed))
    if outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    elif binary_outputs:
        request["parameters"] = {"binary_data_output": True}
    return _body(request, chunks)


def outputs_from_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The output tensors of an inference response, JSON or binary, as arrays (BYTES as object arrays of bytes).

    Raises:
        ServeError: INVALID_INPUT when the body is not a v2 inference response.
    """
    view = memoryview(body)
    length = len(body) if header_length is None else header_length
    response = json_object(view[:length], "the inference response")
    binary, offset = view[length:], 0
    outputs = {}
    for item in response.get("outputs") or []:
        name, datatype, shape = item["name"], item["datatype"], tuple(item["shape"])
        size = (item.get("parameters") or {}).get("binary_data_size")
        dtype = dtype_by_kserve(datatype)
        if dtype is None:
            raise invalid(f"output {name!r} has datatype {datatype}, which kdeploy cannot read")
        if size is not None:
            data = binary[offset:offset + size]
            offset += size
            if dtype.name == STRING:
                values = split_length_prefixed(name, data, "binary data", role="output")
                array = np.empty(len(values), dtype=object)
                array[:] = values
            else:
                array = np.frombuffer(data, dtype=LITTLE_ENDIAN[dtype.name])
        elif dtype.name == STRING:
            array = np.empty(math.prod(shape), dtype=object)
            array[:] = [s.encode("utf-8") for s in np.ravel(item["data"])]
        else:
            array = np.asarray(item["data"], dtype=dtype.numpy)
        outputs[name] = array.reshape(shape)
    return outputs

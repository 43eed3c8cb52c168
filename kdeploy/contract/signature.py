"""The model signature: the one contract every stage shares (standard library and NumPy only).

Export writes it into each version's `manifest.json`; verify, serve and loadtest build, validate and describe
tensors with it. This module must never import TensorFlow, Keras or onnxruntime: the onnxruntime server reads it.

A *feed* is a `Mapping[str, np.ndarray]` from input name to a batch of values; the first dimension of every
tensor is the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.errors import UsageError

Feed = Mapping[str, np.ndarray]


class SignatureError(UsageError):
    """A tensor does not match the signature (unknown name, wrong dtype or shape, missing input)."""


@dataclass(frozen=True)
class DType:
    """One element type under the names each runtime and protocol gives it."""

    name: str
    """NumPy's name, which is also the manifest's (`float32`)."""
    tf_enum: int
    """`tensorflow.DataType` enum value used by TF Serving's TensorProto."""
    kserve: str
    """KServe v2 / Open Inference Protocol datatype (`FP32`)."""
    onnx: str
    """onnxruntime's type string (`tensor(float)`)."""

    @property
    def numpy(self) -> np.dtype:
        """NumPy's dtype; strings are object arrays of bytes, as TensorFlow returns them."""
        return _NUMPY_DTYPES[self.name]


STRING = "string"
"""The manifest's name for a tensor of byte strings (TensorFlow's tf.string)."""

DTYPES: tuple[DType, ...] = (
    DType("float16", 19, "FP16", "tensor(float16)"),
    DType("float32", 1, "FP32", "tensor(float)"),
    DType("float64", 2, "FP64", "tensor(double)"),
    DType("int8", 6, "INT8", "tensor(int8)"),
    DType("int16", 5, "INT16", "tensor(int16)"),
    DType("int32", 3, "INT32", "tensor(int32)"),
    DType("int64", 9, "INT64", "tensor(int64)"),
    DType("uint8", 4, "UINT8", "tensor(uint8)"),
    DType("uint16", 17, "UINT16", "tensor(uint16)"),
    DType("uint32", 22, "UINT32", "tensor(uint32)"),
    DType("uint64", 23, "UINT64", "tensor(uint64)"),
    DType("bool", 10, "BOOL", "tensor(bool)"),
    DType(STRING, 7, "BYTES", "tensor(string)"),
)


_NUMPY_DTYPES: dict[str, np.dtype] = {d.name: np.dtype(object) if d.name == STRING else np.dtype(d.name)
                                     for d in DTYPES}
_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
_BY_KSERVE: dict[str, DType] = {d.kserve: d for d in DTYPES}


def dtype_by_name(name: str) -> DType:
    """The `DType` whose NumPy name is `name`.

    Raises:
        SignatureError: for a type kdeploy does not handle (complex numbers, ...).
    """
    dtype = _BY_NAME.get(name)
    if dtype is not None:
        return dtype
    raise SignatureError(f"unsupported dtype {name!r}; supported: {', '.join(d.name for d in DTYPES)}")


def dtype_by_kserve(datatype: str) -> DType | None:
    """The `DType` whose KServe v2 datatype is `datatype` (FP32, BYTES, ...); None for one kdeploy does not handle."""
    return _BY_KSERVE.get(datatype)


def dtype_by_tf_enum(value: int) -> DType:
    """The `DType` of a `tensorflow.DataType` enum value (a SignatureDef's `TensorInfo.dtype`).

    Raises:
        SignatureError: for a TensorFlow type kdeploy does not handle (resource, variant, complex, bfloat16).
    """
    for dtype in DTYPES:
        if dtype.tf_enum == value:
            return dtype
    raise SignatureError(f"unsupported TensorFlow dtype enum {value}; supported: {', '.join(d.name for d in DTYPES)}")


def dtype_by_onnx(type_string: str) -> DType:
    """The `DType` of an onnxruntime type string (`tensor(float)`).

    Raises:
        SignatureError: for a type kdeploy does not handle (sequences, maps, bfloat16).
    """
    for dtype in DTYPES:
        if dtype.onnx == type_string:
            return dtype
    raise SignatureError(f"unsupported ONNX type {type_string!r}; supported: {', '.join(d.onnx for d in DTYPES)}")


Shape = tuple[int | None, ...]


def format_shape(shape: Shape) -> str:
    """`(None, 8, 8, 1)` as `[-1, 8, 8, 1]`, the way the manifest and error messages spell shapes."""
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: element type and shape, `None` for a dynamic dimension."""

    name: str
    dtype: str
    shape: Shape
    value_range: tuple[float, float] | None = None
    """Inclusive range of valid values, when known (token ids below an Embedding's vocabulary size)."""
    examples: tuple[str, ...] | None = None
    """Some valid values of a string input (from a StringLookup's vocabulary), used to generate inputs."""
    any_shape: bool = False
    """The model leaves the rank open (a TF1 placeholder without shape): any shape with a leading batch dimension
    is accepted, and `shape` is `(None,)`."""

    _np_dtype: np.dtype = field(init=False, repr=False, compare=False)
    _fixed_dims: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    """(index, size) of every fixed dimension: what `check` compares, computed once."""

    def __post_init__(self) -> None:
        dtype_by_name(self.dtype)
        if not self.shape:
            raise SignatureError(f"tensor {self.name!r} has no batch dimension")
        object.__setattr__(self, "_np_dtype", _NUMPY_DTYPES[self.dtype])
        object.__setattr__(self, "_fixed_dims", tuple((i, d) for i, d in enumerate(self.shape) if d is not None))

    @property
    def np_dtype(self) -> np.dtype:
        return self._np_dtype

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": [-1 if d is None else int(d) for d in self.shape],
        }
        if self.value_range is not None:
            out["range"] = list(self.value_range)
        if self.examples is not None:
            out["examples"] = list(self.examples)
        if self.any_shape:
            out["any_shape"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        rng = data.get("range")
        examples = data.get("examples")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(None if int(d) < 0 else int(d) for d in data["shape"]),
            value_range=(float(rng[0]), float(rng[1])) if rng is not None else None,
            examples=tuple(str(e) for e in examples) if examples is not None else None,
            any_shape=bool(data.get("any_shape", False)),
        )

    def check(self, array: np.ndarray, *, cast: bool = False, check_shape: bool = True) -> np.ndarray:
        """Return `array` if it fits this spec (optionally cast to its dtype), else raise.

        Args:
            array: a batch of values for this tensor.
            cast: convert a different numeric dtype of the same kind (float64 to float32, int64 to int32)
                instead of refusing it.
            check_shape: refuse another rank or fixed dimension. Off for a runtime that feeds the graph as the
                values come and lets it decide, as TF Serving feeds a SavedModel (`[3]` into a `[-1, 1]` placeholder
                runs, and the graph answers `[3]`).

        Raises:
            SignatureError: naming the tensor, what was expected and what came.
        """
        array = np.asarray(array)
        if self.dtype == STRING:
            array = self._strings(array)
        elif array.dtype != self._np_dtype:
            if not (cast and _same_kind(array.dtype, self._np_dtype)):
                raise SignatureError(
                    f"input {self.name!r}: expected dtype {self.dtype}, got {array.dtype.name}"
                )
            array = array.astype(self._np_dtype)
        if not check_shape:
            pass
        elif self.any_shape:
            if array.ndim == 0:
                raise SignatureError(f"input {self.name!r}: expected a batch (at least one dimension), got a scalar")
        elif not self._fits(array.shape):
            raise SignatureError(
                f"input {self.name!r}: expected shape {format_shape(self.shape)}, got {list(array.shape)}"
            )
        if self.value_range is not None and array.dtype.kind in "iu" and array.size:
            # Token ids beyond an Embedding's vocabulary are a client error, not a runtime failure.
            low, high = array.min(), array.max()
            if low < self.value_range[0] or high > self.value_range[1]:
                raise SignatureError(
                    f"input {self.name!r}: expected values in [{self.value_range[0]:g}, {self.value_range[1]:g}], "
                    f"got values from {low} to {high}"
                )
        return array

    def _fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(shape[index] == size for index, size in self._fixed_dims)

    def _strings(self, array: np.ndarray) -> np.ndarray:
        """An object array of bytes (what TensorFlow takes and returns) from bytes, str (UTF-8) or object arrays.

        `cast` is not needed: text has one encoding here, so str and bytes are the same strings.
        """
        if array.dtype.kind not in "OSU":
            raise SignatureError(f"input {self.name!r}: expected dtype string, got {array.dtype.name}")
        encoded = [v.encode() if isinstance(v, str) else v for v in array.ravel().tolist()]
        if not all(isinstance(v, bytes) for v in encoded):
            raise SignatureError(f"input {self.name!r}: expected dtype string, got non-string values")
        out = np.empty(len(encoded), dtype=object)
        out[:] = encoded
        return out.reshape(array.shape)


def _same_kind(got: np.dtype, want: np.dtype) -> bool:
    if want.kind == "f":
        return got.kind in "fiu"
    if want.kind in "iu":
        return got.kind in "iu"
    return got.kind == want.kind


DEFAULT_SIGNATURE = "serving_default"
"""The signature a request means when it names none (TF Serving's and Keras' default)."""

METHODS: tuple[str, ...] = ("predict", "classify", "regress")
"""What a signature computes, as TF Serving's SignatureDef `method_name` says (`tensorflow/serving/predict`).

`classify` and `regress` signatures take serialized `tf.Example` strings and answer TF Serving's Classify and
Regress (`classes`/`scores`, `outputs`); every signature answers Predict.
"""
METHOD_PREFIX = "tensorflow/serving/"


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of one of a model's signatures (`serving_default` unless named), in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    name: str = field(default=DEFAULT_SIGNATURE)
    method: str = "predict"
    """One of `METHODS`."""

    _inputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SignatureError(f"signature {self.name!r}: method {self.method!r} is not one of {list(METHODS)}")
        object.__setattr__(self, "_inputs_by_name", {t.name: t for t in self.inputs})

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        spec = self._inputs_by_name.get(name)
        if spec is not None:
            return spec
        raise SignatureError(f"unknown input {name!r}; the model's inputs are {self.input_names}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise SignatureError(f"unknown output {name!r}; the model's outputs are {self.output_names}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.method != "predict":
            out["method"] = self.method
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSignature:
        return cls(
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            name=str(data.get("name", DEFAULT_SIGNATURE)),
            method=str(data.get("method", "predict")),
        )

    def validate_feed(self, feed: Feed, *, cast: bool = False, check_shapes: bool = True) -> dict[str, np.ndarray]:
        """Check a feed against the inputs: every input present, nothing extra, one batch size (see
        `TensorSpec.check` for `cast` and `check_shapes`; without shape checks the batch sizes are not compared
        either: the graph decides).

        Returns:
            The feed in signature order, cast when `cast` is set.

        Raises:
            SignatureError: naming the first offending input.
        """
        by_name = self._inputs_by_name
        if len(feed) != len(by_name) or not all(name in by_name for name in feed):
            extra = sorted(set(feed) - set(by_name))
            if extra:
                raise SignatureError(f"unknown input {extra[0]!r}; the model's inputs are {self.input_names}")
        checked: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise SignatureError(f"missing input {spec.name!r}; the model's inputs are {self.input_names}")
            checked[spec.name] = spec.check(feed[spec.name], cast=cast, check_shape=check_shapes)
        if check_shapes and len(checked) > 1:
            batch_sizes = {name: a.shape[0] for name, a in checked.items()}
            if len(set(batch_sizes.values())) > 1:
                raise SignatureError(f"inputs disagree on the batch size: {batch_sizes}")
        return checked

    def generate_feed(self, batch: int, rng: np.random.Generator, dynamic_dim: int = 16) -> dict[str, np.ndarray]:
        """Random inputs that fit the signature, in range for integer inputs, from the examples for strings.

        Args:
            batch: rows to generate.
            rng: the source of randomness (pass a seeded generator for repeatable inputs).
            dynamic_dim: size used for dynamic dimensions other than the batch.
        """
        feed: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = (batch, *(dynamic_dim if d is None else d for d in spec.shape[1:]))
            kind = spec.np_dtype.kind
            if spec.is_string:
                choices = [e.encode() for e in spec.examples or ("a", "b", "c")]
                values = np.empty(shape, dtype=object)
                values.ravel()[:] = [choices[i] for i in rng.integers(0, len(choices), size=values.size)]
            elif kind == "b":
                values = rng.integers(0, 2, size=shape).astype(bool)
            elif kind in "iu":
                low, high = spec.value_range or (0, 9)
                values = rng.integers(int(low), int(high) + 1, size=shape).astype(spec.np_dtype)
            elif spec.value_range is not None:
                low, high = spec.value_range
                values = rng.uniform(low, high, size=shape).astype(spec.np_dtype)
            else:
                values = rng.standard_normal(size=shape).astype(spec.np_dtype)
            feed[spec.name] = values
        return feed


def batch_size(feed: Feed) -> int:
    """The batch size of a (validated) feed: the first dimension of its first tensor; 1 for a feed without one (no
    inputs, or a scalar fed to a SavedModel as it is)."""
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) else 1


def slice_feed(feed: Feed, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows `start:stop` of every tensor in a feed."""
    return {name: np.ascontiguousarray(values[start:stop]) for name, values in feed.items()}


def feed_from_arrays(
    arrays: Mapping[str, np.ndarray], signature: ModelSignature
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and labels from a data file's arrays (an `.npz` as written by `kdeploy train`).

    The file holds one array per input, named after it; a single-input model may instead use `x`. Labels,
    when present, are in `y`.

    Returns:
        The feed (validated and cast to the signature's dtypes) and the labels or `None`.

    Raises:
        SignatureError: when the arrays do not provide every input.
    """
    names = set(arrays)
    if set(signature.input_names) <= names:
        feed = {name: arrays[name] for name in signature.input_names}
    elif len(signature.inputs) == 1 and "x" in names:
        feed = {signature.inputs[0].name: arrays["x"]}
    else:
        raise SignatureError(
            f"data file has arrays {sorted(names)}; expected one per input {signature.input_names}"
            + (" or 'x'" if len(signature.inputs) == 1 else "")
        )
    labels = np.asarray(arrays["y"]) if "y" in names else None
    checked = signature.validate_feed(feed, cast=True)
    if labels is not None and labels.shape[0] != batch_size(checked):
        raise SignatureError(f"data file has {batch_size(checked)} inputs but {labels.shape[0]} labels")
    return checked, labels


def load_data_file(path: Path, signature: ModelSignature) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and labels from an `.npz` file (see `feed_from_arrays` for the array names).

    Raises:
        UsageError: when the file is missing or unreadable; SignatureError when it does not fit the signature.
    """
    if not Path(path).is_file():
        raise UsageError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    return feed_from_arrays(loaded, signature)

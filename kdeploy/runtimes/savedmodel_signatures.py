"""A SavedModel's SignatureDefs as kdeploy signatures, read from `saved_model.pb` (the proto, not a loaded model).

One reader for both stages that take SavedModels kdeploy did not write: the server serves every signature it can
describe (`lenient`: a tensor of unknown rank, a scalar or one without a batch dimension is described as taking any
shape, since the server feeds the graph as TF Serving does and TensorFlow decides), export converts one (strict:
TFLite, ONNX and generated parity inputs need the rank and a dynamic leading batch dimension). Each
refusal says which tensor and why. TensorFlow's proto module is imported only when a file is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdeploy.contract.signature import (
    DEFAULT_SIGNATURE,
    DTYPES,
    METHOD_PREFIX,
    METHODS,
    ModelSignature,
    SignatureError,
    TensorSpec,
    dtype_by_tf_enum,
    format_shape,
)

REF_OFFSET = 100
"""TensorFlow's reference dtypes are the value dtype plus this (`DataType` enum, types.proto)."""
SERVE_TAG = "serve"
"""The MetaGraph tag TF Serving, the TFLite converter and tf2onnx load."""


def signature_defs(folder: Path) -> dict[str, Any]:
    """The SignatureDefs of the SavedModel's `serve` MetaGraph by name, `serving_default` first, then by name
    (TensorFlow's internal `__...` entries left out).

    Raises:
        SignatureError: when saved_model.pb cannot be parsed or has no `serve` MetaGraph.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(folder) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise SignatureError(f"{path} is not a readable SavedModel: {exc}") from None
    graphs = [m for m in proto.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    if not graphs:
        tags = sorted({t for m in proto.meta_graphs for t in m.meta_info_def.tags})
        raise SignatureError(f"{folder} has no MetaGraph tagged {SERVE_TAG!r} (its tags: {tags}); "
                             "TF Serving and the converters load that one")
    names = sorted((n for n in graphs[0].signature_def if not n.startswith("__")),
                   key=lambda n: (n != DEFAULT_SIGNATURE, n))
    return {name: graphs[0].signature_def[name] for name in names}


def signature_of_def(name: str, definition: Any, *, lenient: bool = False) -> ModelSignature:
    """One SignatureDef as a `ModelSignature`: keys sorted (a SignatureDef's maps have no order; TensorFlow
    flattens them by key), dynamic dimensions None, the TF Serving method kept.

    Raises:
        SignatureError: naming the tensor kdeploy cannot describe (sparse or ragged, an unsupported dtype, a
            scalar; unless `lenient`, also unknown rank or no dynamic leading batch dimension).
    """
    method = definition.method_name.removeprefix(METHOD_PREFIX)
    return ModelSignature(
        inputs=tuple(_spec("input", k, definition.inputs[k], lenient) for k in sorted(definition.inputs)),
        outputs=tuple(_spec("output", k, definition.outputs[k], lenient) for k in sorted(definition.outputs)),
        name=name,
        method=method if method in METHODS else "predict",
    )


def _spec(role: str, key: str, info: Any, lenient: bool) -> TensorSpec:
    encoding = info.WhichOneof("encoding")
    if encoding != "name":
        kind = {"coo_sparse": "a sparse tensor", "composite_tensor": "a composite (ragged) tensor"}.get(
            encoding or "", f"a {encoding} tensor")
        raise SignatureError(f"{role} {key!r} is {kind}; kdeploy handles dense tensors only")
    try:
        # A TF1 variable's reference type (DT_FLOAT_REF = DT_FLOAT + 100) reads as its value's type when fetched.
        dtype = dtype_by_tf_enum(info.dtype - REF_OFFSET if info.dtype > REF_OFFSET else info.dtype).name
    except SignatureError:
        from tensorflow.core.framework import types_pb2

        raise SignatureError(f"{role} {key!r} has dtype {types_pb2.DataType.Name(info.dtype)}, which kdeploy does "
                             f"not handle; supported: {', '.join(d.name for d in DTYPES)}") from None
    if info.tensor_shape.unknown_rank:
        if lenient:
            # TF1 placeholders often leave the rank open (a batch of serialized tf.Example strings): any shape
            # goes, and TensorFlow checks it.
            return TensorSpec(key, dtype, (None,), any_shape=True)
        raise SignatureError(f"{role} {key!r} has an unknown rank; kdeploy export needs the rank, with the batch as "
                             "the leading dynamic dimension (a TensorSpec shape such as [None, 4]); `kdeploy serve` "
                             "serves the SavedModel as it is from a version folder without manifest.json")
    shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    if not shape and lenient:
        # A scalar placeholder (TF Serving's half_plus_three) or output (a counter): TF Serving feeds and returns
        # whatever shape comes, so the server does too.
        return TensorSpec(key, dtype, (None,), any_shape=True)
    if not shape:
        raise SignatureError(f"{role} {key!r} is a scalar: kdeploy serves tensors with a leading batch dimension")
    if shape[0] is not None and not lenient:
        raise SignatureError(f"{role} {key!r} has shape {format_shape(shape)}: kdeploy needs the batch as the "
                             "leading dynamic dimension (-1); save the signature with None as its first dimension")
    return TensorSpec(key, dtype, shape)


def read_signatures(folder: Path) -> tuple[tuple[ModelSignature, ...], list[str]]:
    """Every signature the server can serve, `serving_default` first, and why each other one is left out.

    Raises:
        SignatureError: when the file cannot be read or no signature is left.
    """
    return servable_signatures(signature_defs(folder), folder)


def servable_signatures(definitions: Mapping[str, Any], folder: Path) -> tuple[tuple[ModelSignature, ...], list[str]]:
    """`read_signatures` of SignatureDefs already read (a loaded MetaGraph's), `serving_default` first.

    Raises:
        SignatureError: when no signature is left.
    """
    found, skipped = [], []
    names = sorted((n for n in definitions if not n.startswith("__")), key=lambda n: (n != DEFAULT_SIGNATURE, n))
    for name, definition in ((n, definitions[n]) for n in names):
        try:
            found.append(signature_of_def(name, definition, lenient=True))
        except SignatureError as exc:
            skipped.append(f"{name}: {exc}")
    if not found:
        raise SignatureError(f"{folder} has no signature kdeploy can serve ({'; '.join(skipped) or 'none declared'})")
    return tuple(found), skipped

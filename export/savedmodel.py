"""A SavedModel folder as the source of an export: its signatures, read from `saved_model.pb`, and its files.

The signature comes from the SignatureDef itself (the proto, not a loaded model): its input and output keys are
the names every format keeps (TF Serving, the TFLite signature runner and tf2onnx's graph all use them), its
dtypes and shapes are the manifest's, and its `method_name` says whether it predicts, classifies or regresses.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import SAVEDMODEL_FILES
from kdeploy.contract.signature import (
    DTYPES,
    METHOD_PREFIX,
    METHODS,
    ModelSignature,
    SignatureError,
    TensorSpec,
    dtype_by_tf_enum,
    format_shape,
)

logger = logging.getLogger(__name__)

SERVE_TAG = "serve"
"""The MetaGraph tag TF Serving, the TFLite converter and tf2onnx load."""

def signature_defs(savedmodel_dir: Path) -> dict[str, Any]:
    """The SignatureDefs of the SavedModel's `serve` MetaGraph by name (TensorFlow's internal `__...` ones left out).

    Raises:
        UsageError: when saved_model.pb cannot be parsed or has no `serve` MetaGraph.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(savedmodel_dir) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise UsageError(f"{path} is not a readable SavedModel: {exc}") from None
    graphs = [m for m in proto.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    if not graphs:
        tags = sorted({t for m in proto.meta_graphs for t in m.meta_info_def.tags})
        raise UsageError(f"{savedmodel_dir} has no MetaGraph tagged {SERVE_TAG!r} (its tags: {tags}); "
                         "TF Serving and the converters load that one")
    return {name: d for name, d in graphs[0].signature_def.items() if not name.startswith("__")}


def signature_from_savedmodel(savedmodel_dir: Path, name: str) -> ModelSignature:
    """One signature of a SavedModel as the manifest's `ModelSignature` (dynamic dimensions as None).

    Raises:
        UsageError: for an unknown signature name (listing the ones there are), and for a tensor kdeploy cannot
            describe: sparse or ragged, unknown rank, no leading batch dimension, an unsupported dtype.
    """
    defs = signature_defs(savedmodel_dir)
    if name not in defs:
        if not defs:
            raise UsageError(f"{savedmodel_dir} has no signatures: save it with tf.saved_model.save(obj, DIR, "
                             "signatures=...) or keras' model.export(DIR)")
        raise UsageError(f"unknown signature {name!r} in {savedmodel_dir}; it has {sorted(defs)} "
                         "(choose one with --signature NAME)")
    definition = defs[name]
    method = definition.method_name.removeprefix(METHOD_PREFIX)
    try:
        return ModelSignature(
            # A SignatureDef's maps have no order: sorted by key, the order TensorFlow flattens them in.
            inputs=tuple(_tensor_spec("input", key, definition.inputs[key]) for key in sorted(definition.inputs)),
            outputs=tuple(_tensor_spec("output", key, definition.outputs[key]) for key in sorted(definition.outputs)),
            name=name,
            method=method if method in METHODS else "predict",
        )
    except SignatureError as exc:
        raise UsageError(f"signature {name!r} of {savedmodel_dir}: {exc}") from None


def _tensor_spec(role: str, key: str, info: Any) -> TensorSpec:
    """A SignatureDef's TensorInfo as a TensorSpec, or a refusal saying why kdeploy cannot serve it."""
    encoding = info.WhichOneof("encoding")
    if encoding != "name":
        kind = {"coo_sparse": "a sparse tensor", "composite_tensor": "a composite (ragged) tensor"}.get(
            encoding or "", f"a {encoding} tensor")
        raise SignatureError(f"{role} {key!r} is {kind}; kdeploy handles dense tensors only")
    try:
        dtype = dtype_by_tf_enum(info.dtype).name
    except SignatureError:
        from tensorflow.core.framework import types_pb2

        raise SignatureError(f"{role} {key!r} has dtype {types_pb2.DataType.Name(info.dtype)}, which kdeploy does "
                             f"not handle; supported: {', '.join(d.name for d in DTYPES)}") from None
    if info.tensor_shape.unknown_rank:
        # The server takes such a tensor as it comes (TensorSpec.any_shape), but TFLite, ONNX and parity's
        # generated inputs need its shape.
        raise SignatureError(f"{role} {key!r} has an unknown rank; kdeploy export needs the rank, with the batch as "
                             "the leading dynamic dimension (a TensorSpec shape such as [None, 4]); `kdeploy serve` "
                             "serves the SavedModel as it is from a version folder without manifest.json")
    shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    if not shape or shape[0] is not None:
        raise SignatureError(f"{role} {key!r} has shape {format_shape(shape)}: kdeploy needs the batch as the "
                             "leading dynamic dimension (-1); save the signature with None as its first dimension")
    return TensorSpec(key, dtype, shape)


def copy_savedmodel(source: Path, target: Path) -> None:
    """Copy a SavedModel's own files (saved_model.pb, variables/, assets/, fingerprint.pb) into `target`, where
    TF Serving reads them; anything else in the source folder (a manifest, other formats) stays behind."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SAVEDMODEL_FILES:
        path = Path(source) / name
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            shutil.copy2(path, target / name)

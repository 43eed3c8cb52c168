"""TFLite from a TF1 SavedModel, whose variables are reference variables (`VariableV2`, written by
`tf.compat.v1.saved_model.Builder`, estimators, TF Serving's half_plus_two).

TensorFlow 2's converter loads a SavedModel as objects, and fails on such graphs ("'tf.VariableV2' op expects all
users to be 'tf.Identity', but got user tf.Assign"). TensorFlow's TF1 converter freezes the variables into constants
first (the way TF1 graphs were always converted), so that one converts them. Its model has the graph's tensor names
and no signature; the SignatureDef goes into the model's metadata as TensorFlow's `signature_def_utils` writes it
(`signature_defs_metadata`, what TF Serving reads), so TF Serving and kdeploy serve it with the signature's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.protobuf import saved_model_pb2

from kdeploy.runtimes.savedmodel_signatures import SERVE_TAG
from kdeploy.runtimes.tflite_signature_defs import SIGNATURE_DEFS_METADATA

REFERENCE_VARIABLE_OPS = frozenset({"VariableV2", "Variable"})


class TF1ConversionError(Exception):
    """A TF1 graph that the frozen-variable route cannot convert; the message says why."""


def has_reference_variables(savedmodel_dir: Path) -> bool:
    """Whether the SavedModel's `serve` MetaGraph holds TF1 reference variables (what TF2's converter refuses)."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(savedmodel_dir) / "saved_model.pb").read_bytes())
    return any(node.op in REFERENCE_VARIABLE_OPS for graph in proto.meta_graphs
               if SERVE_TAG in graph.meta_info_def.tags for node in graph.graph_def.node)


def set_quantization(converter: Any, quantization: str) -> None:
    """The optimizations of a TFLite converter (TF2's or TF1's) for `quantization`: fp16 or int8 weights, or none;
    full int8 also needs a representative dataset, which the caller sets."""
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "fp16":
        converter.target_spec.supported_types = [tf.float16]


def tflite_from_tf1_savedmodel(savedmodel_dir: Path, signature_name: str, quantization: str) -> bytes:
    """Convert one signature of a TF1 SavedModel with its variables frozen, the SignatureDef kept in the metadata.

    Raises:
        TF1ConversionError: for int8 calibration (the TF1 converter feeds calibration rows in its own input order,
            which the signature's keys do not give) or a signature the SavedModel lacks.
        Exception: the converter's own errors, with its reason.
    """
    if quantization == "int8":
        raise TF1ConversionError("int8 calibration of a TF1 graph (reference variables) is not supported; use "
                                 "--tflite-quantization dynamic-int8 or fp16")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(savedmodel_dir) / "saved_model.pb").read_bytes())
    definitions = next(g.signature_def for g in proto.meta_graphs if SERVE_TAG in g.meta_info_def.tags)
    if signature_name not in definitions:
        raise TF1ConversionError(f"the SavedModel has no signature {signature_name!r}")
    from tensorflow.python.saved_model import loader_impl

    definition = definitions[signature_name]
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        # The SavedModel loaded into a session (variables restored, init ops run); the TF1 converter then freezes
        # the variables the signature's outputs read into constants. (Its own from_saved_model refuses a
        # SavedModel with assets/, as TF Serving's half_plus_two has.)
        loader_impl.SavedModelLoader(str(savedmodel_dir)).load(session, [SERVE_TAG])
        inputs = [graph.get_tensor_by_name(definition.inputs[k].name) for k in sorted(definition.inputs)]
        outputs = [graph.get_tensor_by_name(definition.outputs[k].name) for k in sorted(definition.outputs)]
        converter = tf.compat.v1.lite.TFLiteConverter.from_session(session, inputs, outputs)
        set_quantization(converter, quantization)
        model = converter.convert()
    return with_signature_defs(model, {signature_name: definitions[signature_name].SerializeToString()})


class _Serialized(bytes):
    """A serialized SignatureDef for flexbuffers' String: TensorFlow stores it as a STRING (binary, NUL-ended), and
    the builder's String takes text it encodes itself; this hands it the bytes as they are."""

    def encode(self, *_args: object) -> bytes:
        return bytes(self)


def with_signature_defs(model: bytes, definitions: Mapping[str, bytes]) -> bytes:
    """The model with `signature_defs_metadata` set to these serialized SignatureDefs (name → bytes), as
    TensorFlow's `signature_def_utils.set_signature_defs` writes it."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    builder = flexbuffers.Builder()
    with builder.Map():
        for name, serialized in sorted(definitions.items()):
            builder.Key(name)
            builder.String(_Serialized(serialized))
    data = builder.Finish()
    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    flat.metadata = [m for m in (flat.metadata or []) if m.name not in (SIGNATURE_DEFS_METADATA,
                                                                       SIGNATURE_DEFS_METADATA.encode())]
    buffer = schema.BufferT()
    buffer.data = list(data)
    flat.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = SIGNATURE_DEFS_METADATA
    entry.buffer = len(flat.buffers) - 1
    flat.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))

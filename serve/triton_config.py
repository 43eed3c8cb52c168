"""Triton's model configuration for a kdeploy model: one builder for `config.pbtxt` files and the ModelConfig RPC."""

from __future__ import annotations

from typing import Any

from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import TensorSpec, dtype_by_name
from kdeploy.serve.config import VersionPolicy
from kdeploy.wire.protos.messages import Protos

PLATFORMS: dict[str, str] = {
    "onnx": "onnxruntime_onnx",
    "savedmodel": "tensorflow_savedmodel",
    "tflite": "tflite",
}
DEFAULT_MAX_BATCH_SIZE = 64


def triton_model_config(
    protos: Protos,
    manifest: Manifest,
    *,
    backend_format: str = "onnx",
    policy: VersionPolicy | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    dynamic_batching: bool = True,
    max_queue_delay_microseconds: int = 100,
) -> Any:
    """An `inference.ModelConfig` message describing the model as Triton would serve it.

    With `max_batch_size > 0` the batch dimension is implicit (Triton's convention): dims list the other
    dimensions only. Models whose first dimension is not dynamic get `max_batch_size: 0` and full dims.
    """
    config = protos.cls("inference.ModelConfig")()
    config.name = manifest.name
    config.platform = PLATFORMS[backend_format]
    if backend_format == "onnx":
        config.default_model_filename = "model.onnx"
    batched = all(spec.shape[0] is None for spec in (*manifest.signature.inputs, *manifest.signature.outputs))
    config.max_batch_size = max_batch_size if batched else 0
    for spec in manifest.signature.inputs:
        _fill(config.input.add(), spec, batched, protos)
    for spec in manifest.signature.outputs:
        _fill(config.output.add(), spec, batched, protos)
    if policy is not None:
        policy.fill_proto(config.version_policy)
    if batched and dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_microseconds
    group = config.instance_group.add()
    group.count = 1
    group.kind = protos.enum_value("inference.ModelInstanceGroup.Kind", "KIND_CPU")
    return config


def _fill(target: Any, spec: TensorSpec, batched: bool, protos: Protos) -> None:
    target.name = spec.name
    # Triton's DataType names match KServe's datatypes but for strings: BYTES on the wire, TYPE_STRING in a config.
    kserve = dtype_by_name(spec.dtype).kserve
    target.data_type = protos.enum_value("inference.DataType", "TYPE_STRING" if kserve == "BYTES" else "TYPE_" + kserve)
    dims = spec.shape[1:] if batched else spec.shape
    target.dims.extend(-1 if d is None else d for d in dims)

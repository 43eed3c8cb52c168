"""Triton's model configuration for a kdeploy model: one builder for `config.pbtxt` files and the ModelConfig RPC."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from kdeploy.common.errors import KdeployError
from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import TensorSpec, dtype_by_name, format_shape
from kdeploy.serve.config import VersionPolicy
from kdeploy.wire.protos.messages import Protos, load_protos

PLATFORMS: dict[str, str] = {
    "onnx": "onnxruntime_onnx",
    "savedmodel": "tensorflow_savedmodel",
    "tflite": "tflite",
}
DEFAULT_MAX_BATCH_SIZE = 64
TRITON_CONFIG_FILE = "config.pbtxt"
"""Triton's per-model configuration, in the model folder beside the versions."""


def triton_model_config(
    protos: Protos,
    manifest: Manifest,
    *,
    backend_format: str = "onnx",
    policy: VersionPolicy | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    dynamic_batching: bool = True,
    max_queue_delay_microseconds: int = 100,
    warmup: bool = True,
) -> Any:
    """An `inference.ModelConfig` message describing the model as Triton would serve it.

    With `max_batch_size > 0` the batch dimension is implicit (Triton's convention): dims list the other
    dimensions only. Models whose first dimension is not dynamic get `max_batch_size: 0` and full dims. With
    `warmup`, Triton warms the model up on zero-filled requests before it is ready (`model_warmup`).
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
    if warmup:
        _add_warmup(config, manifest, batched, protos)
    return config


def _add_warmup(config: Any, manifest: Manifest, batched: bool, protos: Protos) -> None:
    """Triton's `model_warmup`: zero-filled requests of one row and of `max_batch_size` rows (one request of the
    full shape for a model without a batch dimension), run before Triton marks the model ready, as TF Serving
    replays its warm-up file. Dynamic dimensions other than the batch get size 1. Left out when zeros are not a
    valid input (an integer input whose value range excludes 0)."""
    inputs = manifest.signature.inputs
    if any(spec.value_range is not None and not spec.value_range[0] <= 0 <= spec.value_range[1] for spec in inputs):
        return
    for batch_size in (sorted({1, config.max_batch_size}) if batched else [0]):
        warmup = config.model_warmup.add()
        warmup.name = f"zeros_batch_{batch_size}"
        warmup.batch_size = batch_size
        warmup.count = 1
        for spec in inputs:
            entry = warmup.inputs[spec.name]
            entry.data_type = protos.enum_value("inference.DataType", _triton_type(spec.dtype))
            entry.dims.extend(d or 1 for d in (spec.shape[1:] if batched else spec.shape))
            entry.zero_data = True


def _fill(target: Any, spec: TensorSpec, batched: bool, protos: Protos) -> None:
    target.name = spec.name
    target.data_type = protos.enum_value("inference.DataType", _triton_type(spec.dtype))
    dims = spec.shape[1:] if batched else spec.shape
    target.dims.extend(-1 if d is None else d for d in dims)


def _triton_type(spec_dtype: str) -> str:
    """Triton's DataType names match KServe's datatypes but for strings: BYTES on the wire, TYPE_STRING in a config."""
    kserve = dtype_by_name(spec_dtype).kserve
    return "TYPE_STRING" if kserve == "BYTES" else "TYPE_" + kserve


def read_triton_config(path: Path, protos: Protos | None = None) -> Any:
    """Parse a `config.pbtxt` into an `inference.ModelConfig`.

    Raises:
        KdeployError: when the file cannot be read or is not a ModelConfig in text format.
    """
    protos = protos or load_protos()
    config = protos.cls("inference.ModelConfig")()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise KdeployError(f"cannot read {path}: {exc}") from None
    return config


def apply_triton_config(manifest: Manifest, path: Path, protos: Protos | None = None) -> tuple[Manifest, int]:
    """Refine the signature read from a model with what its Triton `config.pbtxt` says, as Triton would.

    Each tensor the config lists must be one of the model's, with the model's type; its dims (after the implicit
    batch dimension when `max_batch_size > 0`) must fit the model's shape and replace it (a config may fix a
    dimension the graph leaves dynamic). Tensors the config leaves out keep the model's description.

    Returns:
        The refined manifest and the config's `max_batch_size` (0: the model has no batch dimension to limit).

    Raises:
        KdeployError: naming the tensor and the file when the config does not fit the model.
    """
    protos = protos or load_protos()
    config = read_triton_config(path, protos)
    batch = int(config.max_batch_size)
    type_names = protos.pool.FindEnumTypeByName("inference.DataType").values_by_number

    def refine(specs: tuple[TensorSpec, ...], entries: Any, kind: str) -> tuple[TensorSpec, ...]:
        by_name = {spec.name: spec for spec in specs}
        refined = dict(by_name)
        for entry in entries:
            spec = by_name.get(entry.name)
            if spec is None:
                raise KdeployError(f"{path}: {kind} {entry.name!r} is not one of the model's {kind}s {list(by_name)}")
            said = type_names[entry.data_type].name if entry.data_type in type_names else str(entry.data_type)
            if said != _triton_type(spec.dtype):
                raise KdeployError(f"{path}: {kind} {entry.name!r} is {said} there, but {spec.dtype} "
                                   f"({_triton_type(spec.dtype)}) in the model")
            dims = tuple(None if d < 0 else int(d) for d in entry.dims)
            shape = (None, *dims) if batch > 0 else dims
            fits = len(shape) == len(spec.shape) and all(
                a is None or b is None or a == b for a, b in zip(shape, spec.shape))
            if not fits:
                raise KdeployError(f"{path}: {kind} {entry.name!r} has dims {format_shape(shape)} there "
                                   f"({'with' if batch > 0 else 'without'} the batch dimension), but "
                                   f"{format_shape(spec.shape)} in the model")
            refined[spec.name] = dataclasses.replace(
                spec, shape=tuple(a if a is not None else b for a, b in zip(shape, spec.shape)))
        return tuple(refined[spec.name] for spec in specs)

    signature = dataclasses.replace(manifest.signature, inputs=refine(manifest.signature.inputs, config.input, "input"),
                                    outputs=refine(manifest.signature.outputs, config.output, "output"))
    return dataclasses.replace(manifest, signature=signature), batch


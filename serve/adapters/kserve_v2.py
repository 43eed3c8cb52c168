"""KServe v2 / Open Inference Protocol: `inference.GRPCInferenceService`, with Triton's ModelConfig and
ModelStatistics extensions so tritonclient and perf_analyzer work unchanged. Each RPC is decode → service → encode."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Container
from typing import Any

from kdeploy.contract.signature import ModelSignature, SignatureError, TensorSpec, dtype_by_name
from kdeploy.serve.models import ServedVersion, VersionState
from kdeploy.serve.service import InferenceService, deadline_of
from kdeploy.serve.triton_config import DEFAULT_MAX_BATCH_SIZE, PLATFORMS, triton_model_config
from kdeploy.wire.errors import ServeError, invalid
from kdeploy.wire.protos.messages import Protos
from kdeploy.wire.tensors import kserve_datatype, ndarray_from_kserve, raw_bytes

SERVER_NAME = "kdeploy"
EXTENSIONS = ("model_configuration", "statistics")


def version_number(name: str, text: str) -> int | None:
    """A KServe version string as a number (None when empty), the same check for gRPC and HTTP."""
    if not text:
        return None
    if not text.isdigit():
        raise invalid(f"model {name!r}: version must be a positive integer, got {text!r}")
    return int(text)


def unsent_input(signature: ModelSignature, name: str, feed: Container[str]) -> TensorSpec:
    """The spec of input `name` of a request whose inputs so far are `feed` (gRPC and HTTP alike).

    Raises:
        ServeError: INVALID_INPUT for an input the model does not have, or one the request sends twice.
    """
    try:
        spec = signature.input(name)
    except SignatureError as exc:
        raise invalid(str(exc)) from None
    if name in feed:
        raise invalid(f"input {name!r} is sent twice")
    return spec


class KServeV2Adapter:
    """Servicer methods for `inference.GRPCInferenceService`."""

    def __init__(self, service: InferenceService, protos: Protos, backend_format: str) -> None:
        self._service = service
        self._protos = protos
        self._format = backend_format
        names = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                 "ModelConfig", "ModelStatistics"]
        self.request_types = {n: protos.cls(f"inference.{n}Request") for n in names}
        self._responses = {n: protos.cls(f"inference.{n}Response") for n in names}
        self._Duration = protos.cls("inference.StatisticDuration")
        try:
            self._version = importlib.metadata.version("kdeploy")
        except importlib.metadata.PackageNotFoundError:
            self._version = "0"

    def _resolve(self, name: str, version: str) -> ServedVersion:
        if not name:
            raise invalid("model name is empty; name the model to call")
        return self._service.models.resolve(name, version_number(name, version))

    def _serving(self, name: str, version: str) -> Any:
        if not name:
            raise invalid("model name is empty; name the model to call")
        return self._service.serving(name, version_number(name, version))

    def ServerLive(self, request: Any, context: Any) -> Any:
        return self._responses["ServerLive"](live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return self._responses["ServerReady"](ready=not self._service.draining and self._service.models.is_ready())

    def ModelReady(self, request: Any, context: Any) -> Any:
        version = version_number(request.name, request.version)
        try:
            statuses = self._service.models.statuses(request.name, version)
        except ServeError:  # an unknown model or version is simply not ready, as in Triton
            statuses = []
        ready = any(s.state is VersionState.AVAILABLE for s in statuses)
        return self._responses["ModelReady"](ready=ready)

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._responses["ServerMetadata"](name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        served = self._resolve(request.name, request.version)
        available = [str(s.version) for s in self._service.models.statuses(request.name)
                     if s.state is VersionState.AVAILABLE]
        response = self._responses["ModelMetadata"](name=served.name, versions=available,
                                                    platform=PLATFORMS[self._format])
        signature = served.signature
        for specs, target in ((signature.inputs, response.inputs), (signature.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=dtype_by_name(spec.dtype).kserve,
                           shape=[-1 if d is None else d for d in spec.shape])
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                          "send every input raw or none")
        with self._serving(request.model_name, request.model_version) as served:
            signature = served.signature
            feed: dict[str, Any] = {}
            for index, tensor in enumerate(request.inputs):
                spec = unsent_input(signature, tensor.name, feed)
                feed[tensor.name] = ndarray_from_kserve(tensor.name, tensor.datatype, tensor.shape,
                                                        tensor.contents, raw[index] if raw else None, spec)
            result = await self._service.infer_async(served, feed, [o.name for o in request.outputs],
                                                     deadline_of(context))
        response = self._responses["ModelInfer"](model_name=served.name, model_version=str(served.version),
                                                 id=request.id)
        for name, array in result.outputs.items():
            response.outputs.add(name=name, datatype=kserve_datatype(array), shape=list(array.shape))
            response.raw_output_contents.append(raw_bytes(array))
        return response

    def ModelConfig(self, request: Any, context: Any) -> Any:
        served = self._resolve(request.name, request.version)
        config = triton_model_config(self._protos, served.loaded()[0], backend_format=self._format,
                                     max_batch_size=served.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
                                     dynamic_batching=False)
        response = self._responses["ModelConfig"]()
        response.config.CopyFrom(config)
        return response

    def ModelStatistics(self, request: Any, context: Any) -> Any:
        names = [request.name] if request.name else self._service.models.model_names
        version = version_number(request.name, request.version) if request.name else None
        response = self._responses["ModelStatistics"]()
        for name in names:
            for served in self._service.models.statuses(name, version):
                stats = served.stats.snapshot()
                entry = response.model_stats.add(
                    name=name, version=str(served.version), last_inference=stats.last_inference_ms,
                    inference_count=stats.inference_count, execution_count=stats.execution_count,
                )
                for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                    duration = getattr(stats, key)
                    getattr(entry.inference_stats, key).MergeFrom(self._Duration(count=duration.count, ns=duration.ns))
                for size, duration in sorted(stats.batch_sizes.items()):
                    batch = entry.batch_stats.add(batch_size=size)
                    # perf_analyzer requires the three compute counts to agree; input/output time is in the totals.
                    for key in ("compute_input", "compute_infer", "compute_output"):
                        getattr(batch, key).count = duration.count
                    batch.compute_infer.ns = duration.ns
        return response

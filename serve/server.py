"""The composition root: `build_server(config)` wires models, service, protocols and ports together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import Manifest
from kdeploy.runtimes.base import Backend, load_backend
from kdeploy.serve.adapters.kserve_v2 import KServeV2Adapter
from kdeploy.serve.adapters.rest import RestApi, make_http_server
from kdeploy.serve.adapters.tfserving import TfServingAdapter
from kdeploy.serve.config import ServeConfig
from kdeploy.serve.errors import GRPC_STATUS, INTERNAL_MESSAGE
from kdeploy.serve.metrics import UNKNOWN_MODEL, ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ServeError
from kdeploy.wire.protos.messages import Protos, load_protos

logger = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
KSERVE_SERVICE = "inference.GRPCInferenceService"


def backend_loader(config: ServeConfig) -> Callable[[Path, Manifest], Backend]:
    """How the server loads a version for its backend, with the runtime settings from the config."""
    options: dict[str, Any] = {}
    if config.backend == "onnx":
        options = {"intra_op_threads": config.intra_op_threads, "providers": config.providers,
                   "graph_optimization": config.graph_optimization}
    elif config.backend == "tflite":
        options = {"num_threads": config.intra_op_threads or None, "pool_size": config.tflite_interpreters}

    def load(version_dir: Path, manifest: Manifest) -> Backend:
        return load_backend(config.backend, version_dir, manifest.signature, **options)

    return load


@dataclass(frozen=True)
class _Method:
    """What the error/metrics wrapper needs to know of one RPC."""

    service: str
    name: str
    protocol: str
    """Label for metrics: tfserving-grpc or kserve-grpc."""
    model_of: Callable[[Any], str] | None = None
    """Reads the model name from a request (None for RPCs that are not about one model)."""
    version_of: Callable[[Any], str] | None = None
    """Reads the served version from a response."""


def _unary(method: _Method, call_adapter: Callable[[Any, Any], Any], metrics: ServerMetrics,
           known_models: frozenset[str]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Wrap a servicer method: ServeError → its status; anything else → INTERNAL, logged, server alive.

    Counts inference RPCs in the request metrics, by model (unknown names share one label), version and status.
    """

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        status, response = grpc.StatusCode.OK, None
        try:
            response = call_adapter(request, context)
            return response
        except ServeError as exc:
            status = GRPC_STATUS[exc.kind]
            context.abort(status, exc.message)
        except Exception:
            status = grpc.StatusCode.INTERNAL
            logger.exception("%s/%s failed", method.service, method.name)
            context.abort(status, INTERNAL_MESSAGE)
        finally:
            if method.model_of is not None:
                model = method.model_of(request)
                model = model if model in known_models else UNKNOWN_MODEL
                version = method.version_of(response) if response is not None and method.version_of else ""
                metrics.requests.labels(model, version, method.protocol, status.name).inc()
                metrics.latency.labels(model, method.protocol).observe(time.perf_counter() - started)
            logger.debug("%s/%s %s %.3f ms", method.service, method.name, status.name,
                         (time.perf_counter() - started) * 1000)

    return call


def _generic_handler(methods: list[_Method], adapter: Any, metrics: ServerMetrics,
                     known_models: frozenset[str]) -> grpc.GenericRpcHandler:
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _unary(m, getattr(adapter, m.name), metrics, known_models),
            request_deserializer=adapter.request_types[m.name].FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
        for m in methods
    }
    return grpc.method_handlers_generic_handler(methods[0].service, handlers)


def _grpc_methods() -> dict[str, list[_Method]]:
    def tfs_model(request: Any) -> str:
        return request.model_spec.name

    def tfs_version(response: Any) -> str:
        return str(response.model_spec.version.value)

    tfs, ksv2 = "tfserving-grpc", "kserve-grpc"
    return {
        PREDICTION_SERVICE: [_Method(PREDICTION_SERVICE, "Predict", tfs, tfs_model, tfs_version),
                             _Method(PREDICTION_SERVICE, "GetModelMetadata", tfs)],
        MODEL_SERVICE: [_Method(MODEL_SERVICE, "GetModelStatus", tfs)],
        KSERVE_SERVICE: [_Method(KSERVE_SERVICE, "ModelInfer", ksv2, lambda r: r.model_name, lambda r: r.model_version)]
        + [_Method(KSERVE_SERVICE, name, ksv2) for name in ("ServerLive", "ServerReady", "ModelReady",
                                                           "ServerMetadata", "ModelMetadata", "ModelConfig",
                                                           "ModelStatistics")],
    }


def _reflection_pool(protos: Protos) -> Any:
    """The server's own descriptors plus health and reflection, so grpcurl can list and describe everything."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()
    for name in protos.file_names:
        file_proto = descriptor_pb2.FileDescriptorProto()
        protos.pool.FindFileByName(name).CopyToProto(file_proto)
        pool.Add(file_proto)
        seen.add(name)
    for module in (health_pb2, reflection_pb2):
        for dependency in (*module.DESCRIPTOR.dependencies, module.DESCRIPTOR):
            if dependency.name not in seen:
                file_proto = descriptor_pb2.FileDescriptorProto()
                dependency.CopyToProto(file_proto)
                pool.Add(file_proto)
                seen.add(dependency.name)
    return pool


@dataclass
class RunningServer:
    """A started server: its ports, and how to stop it."""

    config: ServeConfig
    models: ModelManager
    metrics: ServerMetrics
    grpc_server: grpc.Server
    grpc_port: int
    health: health.HealthServicer
    http_server: Any | None
    rest_port: int | None
    metrics_server: Any | None
    metrics_port: int | None
    started_at: float
    stopping: threading.Event = field(default_factory=threading.Event)

    def set_serving(self) -> None:
        """Health SERVING for the server when every model is ready, and per model when that model is."""
        status = health_pb2.HealthCheckResponse
        for name in self.models.model_names:
            self.health.set(name, status.SERVING if self.models.is_ready(name) else status.NOT_SERVING)
        self.health.set("", status.SERVING if self.models.is_ready() else status.NOT_SERVING)

    def poll_forever(self) -> None:
        """Check the repository every `poll_seconds` until the server stops (run in a thread)."""
        while not self.stopping.wait(self.config.poll_seconds):
            try:
                if self.models.poll():
                    self.set_serving()
            except Exception:  # a bad poll (a folder vanishing mid-read) must not stop the next one
                logger.exception("repository poll failed")

    def stop(self) -> None:
        """Drain as Kubernetes expects: NOT_SERVING at once, requests still accepted for the grace period,
        then new requests refused and in-flight ones finished, all within `drain_seconds`."""
        deadline = time.monotonic() + self.config.drain_seconds
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        logger.info("draining: NOT_SERVING; new requests accepted for %.1f s more", self.config.drain_grace_seconds)
        time.sleep(self.config.drain_grace_seconds)
        if self.http_server is not None:
            self.http_server.shutdown()  # stops accepting; handlers in flight are counted by the model versions
        self.grpc_server.stop(max(0.0, deadline - time.monotonic())).wait()
        self.models.close()
        if self.http_server is not None:
            self.http_server.server_close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        logger.info("stopped after draining")


def build_server(config: ServeConfig) -> RunningServer:
    """Start gRPC (TF Serving, KServe v2, health, reflection), REST and metrics, then load the models.

    Raises:
        UsageError: for a bad configuration or a port that cannot be bound.
    """
    config.check()
    started = time.perf_counter()
    protos = load_protos()
    metrics = ServerMetrics()
    models = ModelManager(list(config.models), config.backend, backend_loader(config), batching=config.batching,
                          metrics=metrics, drain_seconds=config.drain_seconds)
    service = InferenceService(models, metrics)
    tfserving = TfServingAdapter(service, protos, max_tensor_bytes=4 * config.max_message_bytes)
    kserve = KServeV2Adapter(service, protos, config.backend)

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
                         options=options)
    known = frozenset(models.model_names)
    methods = _grpc_methods()
    server.add_generic_rpc_handlers((
        _generic_handler(methods[PREDICTION_SERVICE], tfserving, metrics, known),
        _generic_handler(methods[MODEL_SERVICE], tfserving, metrics, known),
        _generic_handler(methods[KSERVE_SERVICE], kserve, metrics, known),
    ))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (PREDICTION_SERVICE, MODEL_SERVICE, KSERVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server, pool=_reflection_pool(protos),
    )
    try:
        grpc_port = server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    except RuntimeError:
        grpc_port = 0
    if grpc_port == 0:
        raise UsageError(f"cannot listen for gRPC on {config.host}:{config.grpc_port} (port in use?)")
    http_server, rest_port = None, None
    metrics_server, metrics_port = None, None
    try:
        if config.rest_port is not None:
            api = RestApi(service, config.max_message_bytes, metrics, known)
            http_server = make_http_server(api, config.host, config.rest_port, reuse_port=config.reuse_port)
            rest_port = http_server.server_address[1]
        if config.metrics_port is not None:
            metrics_server, metrics_port = metrics.serve(config.host, config.metrics_port)
    except OSError as exc:
        if http_server is not None:
            http_server.server_close()
        raise UsageError(f"cannot listen for REST or metrics on {config.host}: {exc.strerror or exc}") from None

    running = RunningServer(config, models, metrics, server, grpc_port, health_servicer, http_server, rest_port,
                            metrics_server, metrics_port, started)
    # Serve health (NOT_SERVING) and UNAVAILABLE answers while the models load, then flip to SERVING.
    server.start()
    if http_server is not None:
        threading.Thread(target=http_server.serve_forever, name="rest", daemon=True).start()
    models.load_all()
    running.set_serving()
    if config.poll_seconds > 0:
        threading.Thread(target=running.poll_forever, name="poll", daemon=True).start()
    logger.info("serving in %.2f s", time.perf_counter() - started,
                extra={"grpc_port": grpc_port, "rest_port": rest_port, "metrics_port": metrics_port})
    return running

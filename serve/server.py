"""The composition root: `build_server(config)` wires models, service, protocols and ports together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from export.backends.base import Backend, load_backend
from export.manifest import Manifest
from serve.adapters.kserve_v2 import KServeV2Adapter
from serve.adapters.rest import RestApi, make_http_server
from serve.adapters.tfserving import TfServingAdapter
from serve.config import ServeConfig
from serve.errors import GRPC_STATUS, INTERNAL_MESSAGE, ServeError
from serve.models import ModelManager
from serve.protos.messages import Protos, load_protos
from serve.service import InferenceService

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


def _unary(method: Callable[[Any, Any], Any], name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Wrap a servicer method: ServeError → its status; anything else → INTERNAL, logged, server alive."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, context)
        except ServeError as exc:
            context.abort(GRPC_STATUS[exc.kind], exc.message)
        except Exception:
            logger.exception("%s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return call


def _generic_handler(service_name: str, adapter: Any, methods: list[str]) -> grpc.GenericRpcHandler:
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _unary(getattr(adapter, method), f"{service_name}/{method}"),
            request_deserializer=adapter.request_types[method].FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
        for method in methods
    }
    return grpc.method_handlers_generic_handler(service_name, handlers)


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
    grpc_server: grpc.Server
    grpc_port: int
    health: health.HealthServicer
    http_server: Any | None
    rest_port: int | None
    started_at: float

    def set_serving(self) -> None:
        """Health SERVING for the server when every model is ready, and per model when that model is."""
        status = health_pb2.HealthCheckResponse
        for name in self.models.model_names:
            self.health.set(name, status.SERVING if self.models.is_ready(name) else status.NOT_SERVING)
        self.health.set("", status.SERVING if self.models.is_ready() else status.NOT_SERVING)

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish (up to `grace` seconds), unload the models."""
        self.health.enter_graceful_shutdown()
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
        self.grpc_server.stop(grace).wait()
        self.models.close()


def build_server(config: ServeConfig) -> RunningServer:
    """Load the models and start gRPC (TF Serving, KServe v2, health, reflection) and REST on their ports.

    Raises:
        UsageError: for a bad configuration; OSError when a port cannot be bound.
    """
    config.check()
    started = time.perf_counter()
    protos = load_protos()
    models = ModelManager(list(config.models), config.backend, backend_loader(config))
    service = InferenceService(models)
    tfserving = TfServingAdapter(service, protos)
    kserve = KServeV2Adapter(service, protos, config.backend)

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
                         options=options)
    server.add_generic_rpc_handlers((
        _generic_handler(PREDICTION_SERVICE, tfserving, ["Predict", "GetModelMetadata"]),
        _generic_handler(MODEL_SERVICE, tfserving, ["GetModelStatus"]),
        _generic_handler(KSERVE_SERVICE, kserve, list(kserve.request_types)),
    ))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (PREDICTION_SERVICE, MODEL_SERVICE, KSERVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server, pool=_reflection_pool(protos),
    )
    grpc_port = server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    if grpc_port == 0:
        raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
    http_server, rest_port = None, None
    if config.rest_port is not None:
        http_server = make_http_server(RestApi(service, config.max_message_bytes), config.host, config.rest_port)
        rest_port = http_server.server_address[1]

    running = RunningServer(config, models, server, grpc_port, health_servicer, http_server, rest_port, started)
    # Serve health (NOT_SERVING) and UNAVAILABLE answers while the models load, then flip to SERVING.
    server.start()
    if http_server is not None:
        threading.Thread(target=http_server.serve_forever, name="rest", daemon=True).start()
    models.load_all()
    running.set_serving()
    return running


"""The composition root: `build_server(config)` wires models, service, protocols and ports together."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import Manifest, bare_artifact_path
from kdeploy.runtimes.base import Backend, load_backend
from kdeploy.serve.adapters.kserve_rest import KServeRestApi
from kdeploy.serve.adapters.kserve_v2 import KServeV2Adapter
from kdeploy.serve.adapters.rest import RestApi
from kdeploy.serve.adapters.tfserving import TfServingAdapter
from kdeploy.serve.config import ServeConfig
from kdeploy.serve.config_reload import ModelConfigReloader
from kdeploy.serve.grpc_server import GrpcFrontEnd, Method, Service
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.model_settings import RuntimeSettings
from kdeploy.serve.models import ModelManager
from kdeploy.serve.observe import Observers, build_observers
from kdeploy.serve.remote import build_mirror, mirror_forever
from kdeploy.serve.rest_server import RestServer
from kdeploy.serve.service import InferenceService
from kdeploy.serve.tls import CertificateReloader
from kdeploy.wire.protos.messages import Protos, load_protos

logger = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
KSERVE_SERVICE = "inference.GRPCInferenceService"


def backend_loader(config: ServeConfig) -> Callable[[Path, Manifest | None, RuntimeSettings], Backend]:
    """How the server loads a version for its backend, with the config's settings and the version's own."""

    def load(version_dir: Path, manifest: Manifest | None, settings: RuntimeSettings) -> Backend:
        options: dict[str, Any] = {}
        if config.backend == "onnx":
            options = {"intra_op_threads": settings.intra_op_threads, "spin_wait": settings.spin_wait,
                       "providers": config.providers, "graph_optimization": config.graph_optimization}
        elif config.backend == "tflite":
            options = {"num_threads": settings.intra_op_threads or None, "pool_size": config.tflite_interpreters}
        if manifest is None:  # a version kdeploy did not export: the runtime reads the artifact's signatures
            return load_backend(config.backend, version_dir, None,
                                artifact_path=bare_artifact_path(version_dir, config.backend), **options)
        return load_backend(config.backend, version_dir, manifest.signature,
                            artifact_path=manifest.artifacts[config.backend].path, **options)

    return load


def runtime_settings(config: ServeConfig) -> RuntimeSettings:
    """The server-wide runtime settings: every model's, unless its kdeploy.toml or server config entry says else."""
    return RuntimeSettings(intra_op_threads=config.intra_op_threads, spin_wait=config.spin_wait,
                           execution=config.execution, batching=config.batching)


def _grpc_methods() -> dict[str, list[Method]]:
    def tfs_model(request: Any) -> str:
        return request.model_spec.name

    def tfs_version(response: Any) -> str:
        return str(response.model_spec.version.value)

    def multi_model(request: Any) -> str:
        return request.tasks[0].model_spec.name if request.tasks else ""

    def multi_version(response: Any) -> str:
        return str(response.results[0].model_spec.version.value) if response.results else ""

    tfs, ksv2 = "tfserving-grpc", "kserve-grpc"
    return {
        PREDICTION_SERVICE: [Method(PREDICTION_SERVICE, name, tfs, tfs_model, tfs_version)
                             for name in ("Predict", "Classify", "Regress")]
        + [Method(PREDICTION_SERVICE, "MultiInference", tfs, multi_model, multi_version),
           Method(PREDICTION_SERVICE, "GetModelMetadata", tfs)],
        MODEL_SERVICE: [Method(MODEL_SERVICE, name, tfs) for name in ("GetModelStatus", "HandleReloadConfigRequest")],
        KSERVE_SERVICE: [Method(KSERVE_SERVICE, "ModelInfer", ksv2, lambda r: r.model_name, lambda r: r.model_version)]
        + [Method(KSERVE_SERVICE, name, ksv2) for name in ("ServerLive", "ServerReady", "ModelReady",
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
    service: InferenceService
    models: ModelManager
    metrics: ServerMetrics
    front_end: GrpcFrontEnd
    grpc_port: int
    executor: ThreadPoolExecutor
    rest: RestServer | None
    rest_port: int | None
    metrics_server: Any | None
    metrics_port: int | None
    started_at: float
    stopping: threading.Event = field(default_factory=threading.Event)
    observers: Observers | None = None
    """Tracing, payload and access logs (None: all off)."""
    tls: CertificateReloader | None = None
    """The TLS material every port serves (None: plaintext)."""
    health_port: int | None = None
    """The plaintext health-only port, when asked for."""

    def set_serving(self) -> None:
        """Health SERVING for the server when every model is ready, and per model when that model is."""
        statuses = {name: self.models.is_ready(name) for name in self.models.model_names}
        self.front_end.set_health({**statuses, "": self.models.is_ready()})

    def poll_forever(self) -> None:
        """Check the repository every `poll_seconds` until the server stops (run in a thread)."""
        while not self.stopping.wait(self.config.poll_seconds):
            try:
                if self.models.poll():
                    self.set_serving()
            except Exception:  # a bad poll (a folder vanishing mid-read) must not stop the next one
                logger.exception("repository poll failed")

    def stop(self, release_ports: bool = True, grace_seconds: float | None = None) -> None:
        """Drain as Kubernetes expects: NOT_SERVING at once, requests still accepted for the grace period,
        then new requests refused (UNAVAILABLE) and in-flight ones finished, all within `drain_seconds`.

        Args:
            release_ports: stop gRPC's server and free the ports (for callers that go on running). A process that
                exits next passes False: its closing sockets fail calls still on the wire with UNAVAILABLE, where
                gRPC's own shutdown would cancel them (CANCELLED, which clients do not retry).
            grace_seconds: how long requests are still accepted after NOT_SERVING (default: the configured grace).
        """
        grace = self.config.drain_grace_seconds if grace_seconds is None else grace_seconds
        deadline = time.monotonic() + self.config.drain_seconds
        self.stopping.set()
        self.service.draining = True  # KServe readiness, gRPC and REST: not ready at once
        self.front_end.enter_graceful_shutdown()
        logger.info("draining: NOT_SERVING; new requests accepted for %.1f s more", grace)
        time.sleep(grace)
        rest = self.rest
        if rest is not None:
            self.front_end.call_soon(rest.refuse)  # new REST requests: 503; those in progress finish
        self.front_end.drain(deadline - time.monotonic())
        if rest is not None:
            self.front_end.run(rest.stop(), timeout=max(1.0, deadline - time.monotonic()))
        self.models.close()
        if self.observers is not None:  # spans exported, queued log records written (before the process exits)
            self.observers.close()
        self.metrics.close()  # a worker's last counts reach the files its parent reads
        if release_ports:
            self.front_end.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        logger.info("stopped after draining")


def exit_process(code: int) -> NoReturn:
    """End a drained server's process without gRPC's shutdown.

    At interpreter exit gRPC shuts its server down and cancels the calls it has received but not handed to a handler:
    clients sending right up to the exit see CANCELLED, which they do not retry. Ending the process here (logs and
    standard streams flushed first) closes the sockets instead, and those calls fail UNAVAILABLE, which they retry.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _kdeploy_version() -> str:
    try:
        return importlib.metadata.version("kdeploy")
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_server(config: ServeConfig) -> RunningServer:
    """Start gRPC (TF Serving, KServe v2, health, reflection), REST and metrics, then load the models.

    Raises:
        UsageError: for a bad configuration or a port that cannot be bound.
    """
    config.check()
    started = time.perf_counter()
    source = config.tls_source
    tls = CertificateReloader(source) if source is not None else None  # bad TLS files: a UsageError before binding
    protos = load_protos()
    metrics = ServerMetrics()
    if config.metrics_flush_seconds > 0:
        metrics.flush_every(config.metrics_flush_seconds)
    models = ModelManager(list(config.models), config.backend, backend_loader(config),
                          settings=runtime_settings(config), inline_max_seconds=config.inline_max_micros / 1e6,
                          metrics=metrics, drain_seconds=config.drain_seconds)
    running_box: list[RunningServer] = []  # the reloader tells the running server (made below) to update health
    reloader = ModelConfigReloader(models, lambda: running_box[0].set_serving() if running_box else None,
                                   config_file=config.model_config_file, allow_requests=config.allow_config_reload)
    observers = build_observers(config, metrics, os.environ, _kdeploy_version())
    executor = ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="infer")
    service = InferenceService(models, metrics, executor=executor, observers=observers)
    tfserving = TfServingAdapter(service, protos, max_tensor_bytes=4 * config.max_message_bytes,
                                 tensor_encoding=config.predict_tensor_encoding, reloader=reloader)
    kserve = KServeV2Adapter(service, protos, config.backend)
    methods = _grpc_methods()
    known = models  # the model names served now: a reloaded model config changes them
    front_end = GrpcFrontEnd(
        [Service(PREDICTION_SERVICE, methods[PREDICTION_SERVICE], tfserving),
         Service(MODEL_SERVICE, methods[MODEL_SERVICE], tfserving),
         Service(KSERVE_SERVICE, methods[KSERVE_SERVICE], kserve)],
        metrics, known, options=config.grpc_options,
        reflection_names=(PREDICTION_SERVICE, MODEL_SERVICE, KSERVE_SERVICE), reflection_pool=_reflection_pool(protos),
        observers=observers,
    )
    # Health (NOT_SERVING) and UNAVAILABLE answers are served while the models load, then health flips to SERVING.
    health_address = None if config.health_port is None else f"{config.host}:{config.health_port}"
    extra = (f"unix:{config.grpc_socket_path}",) if config.grpc_socket_path else ()
    grpc_port = front_end.start(f"{config.host}:{config.grpc_port}", tls.grpc_credentials() if tls else None,
                                health_address=health_address, extra_addresses=extra)
    if grpc_port == 0 or front_end.health_port == 0:
        front_end.close()
        if observers is not None:
            observers.close()
        which = f"gRPC on {config.host}:{config.grpc_port}" if grpc_port == 0 else f"health on {health_address}"
        raise UsageError(f"cannot listen for {which} (port in use?)" + (f" or on {extra[0]}" if extra else ""))
    rest, rest_port = None, None
    metrics_server, metrics_port = None, None
    try:
        if config.rest_port is not None:
            rest = RestServer(RestApi(service, config.max_message_bytes, metrics, known), observers,
                              KServeRestApi(service, kserve, metrics, known),
                              metrics_page=(config.rest_metrics_path, metrics.exposition)
                              if config.rest_metrics_path else None)
            rest_port = front_end.run(rest.start(config.host, config.rest_port, reuse_port=config.reuse_port,
                                                 ssl_context=tls.reloading_context() if tls else None))
        if config.metrics_port is not None:
            metrics_server, metrics_port = metrics.serve(config.host, config.metrics_port,
                                                         tls.reloading_context() if tls else None)
    except OSError as exc:
        if rest is not None and rest_port is not None:
            front_end.run(rest.stop())
        front_end.close()
        if observers is not None:
            observers.close()
        raise UsageError(f"cannot listen for REST or metrics on {config.host}: {exc.strerror or exc}") from None

    running = RunningServer(config, service, models, metrics, front_end, grpc_port, executor, rest, rest_port,
                            metrics_server, metrics_port, started, observers=observers,
                            tls=tls, health_port=front_end.health_port)
    running_box.append(running)
    mirror = build_mirror(config, metrics, models)
    if mirror is not None:
        try:  # the first listing: a wrong credential or URL stops the start (unless told to wait for models)
            mirror.poll(raise_errors=not config.wait_for_models)
        except UsageError:
            running.stop(grace_seconds=0.0)
            raise
    models.load_all()
    running.set_serving()
    if config.poll_seconds > 0:
        threading.Thread(target=running.poll_forever, name="poll", daemon=True).start()
    if config.model_config_file is not None and config.model_config_file_poll_seconds > 0:
        threading.Thread(target=reloader.poll_forever, args=(config.model_config_file_poll_seconds, running.stopping),
                         name="model-config-poll", daemon=True).start()
    if mirror is not None and config.storage_poll_seconds > 0:
        threading.Thread(target=mirror_forever, name="storage-poll", daemon=True,
                         args=(mirror, config.storage_poll_seconds, running.stopping, models,
                               running.set_serving)).start()
    logger.info("serving in %.2f s", time.perf_counter() - started,
                extra={"grpc_port": grpc_port, "rest_port": rest_port, "metrics_port": metrics_port})
    return running

"""Typed server configuration, built once from flags (or a TF Serving models.config) at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdeploy.common.errors import UsageError
from kdeploy.runtimes.base import GRAPH_OPTIMIZATIONS
from kdeploy.serve.tls import TlsSource
from kdeploy.storage.urls import StorageUrl
from kdeploy.wire.tensors import TENSOR_ENCODINGS

if TYPE_CHECKING:
    from kdeploy.serve.model_settings import ModelSettings

BACKENDS: tuple[str, ...] = ("onnx", "savedmodel", "tflite")
SPIN_WAIT_MODES: tuple[str, ...] = ("auto", "on", "run", "off")
"""onnxruntime's idle intra-op threads: chosen at load, spin (onnxruntime's default), spin only while a run is in
flight, sleep."""
EXECUTION_MODES: tuple[str, ...] = ("auto", "inline", "thread")
"""Where a request runs: chosen at load, on the event loop, on the server's threads."""


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (the fields kdeploy uses)."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()

    def check(self, source: str = "batching parameters") -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise UsageError(f"{source}: max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1")
        if self.batch_timeout_micros < 0:
            raise UsageError(f"{source}: batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size or sizes[0] < 1):
            raise UsageError(f"{source}: allowed_batch_sizes must ascend and end at max_batch_size "
                             f"({self.max_batch_size}), got {list(sizes)}")

    @property
    def warmup_sizes(self) -> tuple[int, ...]:
        """The batch sizes a runtime sees: the allowed sizes, or 1 and the maximum."""
        return self.allowed_batch_sizes or tuple(sorted({1, self.max_batch_size}))

    def padded_size(self, rows: int) -> int:
        """The smallest allowed size that holds `rows` (rows itself when no sizes are given)."""
        return next((size for size in self.allowed_batch_sizes if size >= rows), rows)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve, as TF Serving's ServableVersionPolicy."""

    kind: str = "latest"
    """`latest`, `all` or `specific`."""
    num_versions: int = 1
    """For `latest`: how many of the highest versions."""
    versions: tuple[int, ...] = ()
    """For `specific`: the versions."""

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest`, `latest:N`, `all` or `specific:V1,V2`.

        Raises:
            UsageError: for any other text.
        """
        match = re.fullmatch(r"(latest)(?::(\d+))?|(all)|specific:(\d+(?:,\d+)*)", text.strip())
        if not match:
            raise UsageError(f"--version-policy {text!r}: expected latest[:N], all or specific:V[,V...]")
        if match.group(1):
            count = int(match.group(2) or 1)
            if count < 1:
                raise UsageError(f"--version-policy {text!r}: N must be at least 1")
            return cls("latest", num_versions=count)
        if match.group(3):
            return cls("all")
        return cls("specific", versions=tuple(sorted({int(v) for v in match.group(4).split(",")})))

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk (ascending)."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return [v for v in sorted(available) if v in self.versions]
        return sorted(available)[-self.num_versions:]

    def fill_proto(self, message: Any) -> None:
        """Write the policy into TF Serving's ServableVersionPolicy or Triton's ModelVersionPolicy (same fields)."""
        if self.kind == "all":
            message.all.SetInParent()
        elif self.kind == "specific":
            message.specific.versions.extend(self.versions)
        else:
            message.latest.num_versions = self.num_versions

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class ModelSource:
    """One model to serve: a folder of integer versions, how to pick versions, and version labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)
    """Version labels (`stable` -> 1), as in TF Serving's version_labels."""
    url: StorageUrl | None = None
    """The model's folder in an object store, when its versions live there: `base_path` is then its local cache
    folder, which the server loads from as from any folder (`kdeploy.storage.mirror` keeps it in line)."""
    settings: ModelSettings | None = None
    """Runtime settings for this model from the server config file (over the model folder's kdeploy.toml)."""


def parse_grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """`grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb` as (name, value) pairs, integers as integers (TF
    Serving's --grpc_channel_arguments format).

    Raises:
        UsageError: for an entry without `=`.
    """
    pairs: list[tuple[str, int | str]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--grpc-channel-arguments: expected NAME=VALUE[,NAME=VALUE...], got {entry!r}")
        value = value.strip()
        pairs.append((name.strip(), int(value) if re.fullmatch(r"-?\d+", value) else value))
    return tuple(pairs)


@dataclass(frozen=True)
class ServeConfig:
    """Everything `kdeploy serve` needs."""

    models: tuple[ModelSource, ...]
    backend: str = "onnx"
    """Runtime for every model: onnx (onnxruntime), savedmodel (TensorFlow) or tflite (LiteRT)."""
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    """0 picks a free port (printed at start-up)."""
    rest_port: int | None = 8501
    """TF Serving's REST API and KServe v2 over HTTP; None turns it off, 0 picks a free port."""
    max_message_mb: int = 64
    """Largest request or response, in MiB (gRPC answers RESOURCE_EXHAUSTED, REST 413 beyond it)."""
    intra_op_threads: int = 0
    """Threads per inference inside the runtime; 0 lets the runtime decide."""
    spin_wait: str = "auto"
    """onnxruntime's idle intra-op threads: `on` spin for work (onnxruntime's default), `run` spin only while a run
    is in flight, `off` sleep, `auto` chosen per model at load from its warm-up timing (docs/serve/tuning.md): a
    spinning pool takes the cores the event loop needs on tiny models, a sleeping one costs a heavy model a wake-up
    per parallel section."""
    execution: str = "auto"
    """Where a request runs: `inline` on the event loop, `thread` on the `grpc_threads`, `auto` chosen per model at
    load (inline when its run is short or already uses every core)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers in order of preference (unavailable ones are skipped with a warning)."""
    graph_optimization: str = "all"
    """onnxruntime graph optimisation level: disable, basic, extended or all."""
    grpc_threads: int = 16
    """Threads that run the models too slow to run inline on the gRPC event loop (the runtime releases the GIL)."""
    inline_max_micros: int = 200
    """With `execution` auto: a model whose one-row run (measured at warm-up) takes at most this many microseconds
    is tiny: it runs inline on the event loop (a hand-off to a thread would cost more than the run) and, with
    `spin_wait` auto, its idle threads sleep."""
    metrics_flush_seconds: float = 0.0
    """How often the request counters reach prometheus-client's metrics besides every scrape (0: only then); a worker
    process flushes on a timer, since the parent reads its values from prometheus-client's multiprocess files."""
    predict_tensor_encoding: str = "typed"
    """How TF Serving Predict answers carry values: `typed` (`float_val`..., as TF Serving) or `content`
    (`tensor_content` bytes)."""
    tflite_interpreters: int = 2
    """TFLite interpreters per version (each serves one request at a time)."""
    batching: BatchingParameters | None = None
    """Dynamic batching settings (None: every request runs on its own, as without --enable-batching)."""
    metrics_port: int | None = 8502
    """Prometheus `GET /metrics`; None turns it off, 0 picks a free port."""
    poll_seconds: float = 2.0
    """How often the repository is checked for new or removed versions; 0 turns polling off."""
    storage_poll_seconds: float = 30.0
    """How often a model folder in an object store is listed (one LIST request per model), jittered, and backed off
    up to 8x after errors; 0 lists it only at start-up."""
    storage_settle_seconds: float = 60.0
    """A version without a manifest.json in an object store (written by another tool) is served once none of its
    objects has changed for this long."""
    cache_dir: Path | None = None
    """Local cache of the versions served from an object store (default: $XDG_CACHE_HOME/kdeploy or ~/.cache/kdeploy;
    an emptyDir in Kubernetes)."""
    drain_seconds: float = 30.0
    """On SIGTERM, the longest the server takes to finish in-flight requests and exit."""
    drain_grace_seconds: float = 5.0
    """On SIGTERM, how long new requests are still accepted (health already NOT_SERVING) so load balancers notice."""
    wait_for_models: bool = False
    """With polling on, keep running while no model can be served (TF Serving's behaviour); else that is an error."""
    workers: int = 1
    """Server processes sharing the ports (SO_REUSEPORT), each with its own copy of the models."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT (set for each worker process of `workers` > 1)."""
    model_config_file: Path | None = None
    """The TF Serving ModelServerConfig file `models` came from, re-read every `model_config_file_poll_seconds`."""
    model_config_file_poll_seconds: float = 0.0
    """How often the model config file is re-read and a changed config applied; 0: never (TF Serving's default)."""
    allow_config_reload: bool = False
    """Accept ModelService/HandleReloadConfigRequest, which makes the server load whatever paths it names (TF Serving
    always accepts it)."""
    grpc_socket_path: str | None = None
    """Also serve gRPC on this Unix domain socket (TF Serving's --grpc_socket_path)."""
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    """Further gRPC server arguments, as TF Serving's --grpc_channel_arguments (`grpc.max_connection_age_ms=2000`)."""
    rest_metrics_path: str | None = None
    """Also answer Prometheus metrics on the REST port at this path (TF Serving's MonitoringConfig, from
    --monitoring-config-file)."""
    payload_log_rate: float = 0.0
    """Share of answered requests whose inputs and outputs are logged (0: off; 1: every one)."""
    payload_log_file: Path | None = None
    """JSON lines file of payload log events (one CloudEvent per line), rotated by size."""
    payload_log_url: str | None = None
    """HTTP endpoint that receives payload log events as KServe's logger sends them (binary-mode CloudEvents)."""
    payload_log_max_mb: int = 100
    """Size at which the payload log file is rotated (FILE.1, FILE.2 ...); 0: never."""
    payload_log_backups: int = 5
    """Rotated payload log files kept."""
    access_log: str | None = None
    """One JSON line per request to this file, or `-` for standard output (None: no access log)."""
    log_queue_size: int = 1000
    """Records the payload log and the access log each hold for their writer; beyond it they drop (and count)."""
    tls_cert: Path | None = None
    """PEM certificate chain: TLS on the gRPC, REST and metrics ports (renewed files are picked up while running)."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert` (unencrypted)."""
    tls_client_ca: Path | None = None
    """PEM CA certificates: mutual TLS, every client must present a certificate signed by one of them."""
    ssl_config_file: Path | None = None
    """TF Serving's SSLConfig text file (server_key, server_cert, custom_ca, client_verify), instead of `tls_*`."""
    health_port: int | None = None
    """A plaintext port answering grpc.health.v1 only (kubelet's gRPC probe does not speak TLS); None turns it off,
    0 picks a free port."""

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if not self.models:
            raise UsageError("no model to serve")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise UsageError(f"unknown graph optimisation {self.graph_optimization!r}; "
                             f"choose from {', '.join(GRAPH_OPTIMIZATIONS)}")
        if self.max_message_mb < 1:
            raise UsageError("--max-message-mb must be at least 1")
        if self.storage_poll_seconds < 0 or self.storage_settle_seconds < 0:
            raise UsageError("--storage-poll-seconds and --storage-settle-seconds must not be negative")
        if self.poll_seconds < 0 or self.drain_seconds < 0 or self.drain_grace_seconds < 0:
            raise UsageError("--poll-seconds, --drain-seconds and --drain-grace-seconds must not be negative")
        if self.predict_tensor_encoding not in TENSOR_ENCODINGS:
            raise UsageError(f"--predict-tensor-encoding {self.predict_tensor_encoding!r}: "
                             f"choose from {', '.join(TENSOR_ENCODINGS)}")
        if self.spin_wait not in SPIN_WAIT_MODES:
            raise UsageError(f"--spin-wait {self.spin_wait!r}: choose from {', '.join(SPIN_WAIT_MODES)}")
        if self.execution not in EXECUTION_MODES:
            raise UsageError(f"--execution {self.execution!r}: choose from {', '.join(EXECUTION_MODES)}")
        if self.intra_op_threads < 0:
            raise UsageError("--intra-op-threads must not be negative")
        if self.inline_max_micros < 0:
            raise UsageError("--inline-max-micros must not be negative")
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.model_config_file_poll_seconds < 0:
            raise UsageError("--model-config-file-poll-seconds must not be negative")
        if self.model_config_file_poll_seconds > 0 and self.model_config_file is None:
            raise UsageError("--model-config-file-poll-seconds needs --model-config-file")
        if self.rest_metrics_path is not None and self.rest_port is None:
            raise UsageError("--monitoring-config-file serves metrics on the REST port: it needs REST (no --no-rest)")
        if self.drain_grace_seconds > self.drain_seconds:
            raise UsageError("--drain-grace-seconds must not be longer than --drain-seconds")
        self._check_logs()
        self.check_tls()
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise UsageError(f"model names must be unique, got {names}")

    def _check_logs(self) -> None:
        sinks = self.payload_log_file is not None or self.payload_log_url is not None
        if not 0.0 <= self.payload_log_rate <= 1.0:
            raise UsageError(f"--payload-log-rate must be between 0 and 1, got {self.payload_log_rate}")
        if self.payload_log_rate > 0 and not sinks:
            raise UsageError("--payload-log-rate needs a sink: --payload-log-file PATH and/or --payload-log-url URL")
        if sinks and self.payload_log_rate == 0:
            raise UsageError("--payload-log-file/--payload-log-url log nothing at rate 0: set --payload-log-rate "
                             "(e.g. 0.01 for 1 % of the requests, 1 for all)")
        if self.payload_log_max_mb < 0 or self.payload_log_backups < 0:
            raise UsageError("--payload-log-max-mb and --payload-log-backups must not be negative")
        if self.log_queue_size < 1:
            raise UsageError(f"--log-queue-size must be at least 1, got {self.log_queue_size}")

    def check_tls(self) -> None:
        if self.ssl_config_file is not None and (self.tls_cert or self.tls_key or self.tls_client_ca):
            raise UsageError("give --ssl-config-file or --tls-cert/--tls-key, not both")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS with client "
                             "certificates")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")

    @property
    def tls_source(self) -> TlsSource | None:
        """Where the TLS material comes from, or None for plaintext ports."""
        if self.ssl_config_file is not None:
            return TlsSource(ssl_config_file=self.ssl_config_file)
        if self.tls_cert is not None:
            return TlsSource(cert=self.tls_cert, key=self.tls_key, client_ca=self.tls_client_ca)
        return None

    @property
    def grpc_options(self) -> list[tuple[str, Any]]:
        """The gRPC server's arguments: message limits, SO_REUSEPORT, then `grpc_channel_arguments` (which win)."""
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0), *self.grpc_channel_arguments]

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

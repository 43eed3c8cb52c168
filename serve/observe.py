"""What the front ends record of each request for traces and logs: one `Observers` object, built once.

The gRPC and HTTP front ends call `begin` when a request arrives and `end` when its answer is ready; in between,
the request's `RequestScope` (trace id, span, protocol) is the current one for its coroutine (`REQUEST`, a context
variable), so the inference service adds child spans and payload log records to the right request without any
argument passed through the protocol adapters. With tracing, the access log and the payload log all off, the
server builds no `Observers` and the front ends skip all of this on one `is None` test.

This module never imports OpenTelemetry: `serve/tracing.py` does, and only when `tracing_wanted` says an OTLP
endpoint is configured, so a server without tracing neither loads nor pays for the SDK.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdeploy.common.errors import UsageError

if TYPE_CHECKING:
    from kdeploy.serve.access_log import AccessLog
    from kdeploy.serve.config import ServeConfig
    from kdeploy.serve.metrics import ServerMetrics
    from kdeploy.serve.payload_log import PayloadLog
    from kdeploy.serve.tracing import Tracing

logger = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
TRACE_HEADERS = ("traceparent", "tracestate")
"""W3C trace context headers (gRPC metadata keys are lowercase too)."""
_TRUE = ("true", "1", "yes", "on")


def parse_traceparent(value: str | None) -> tuple[str, str]:
    """The trace id (32 hex digits) and parent span id (16) of a W3C `traceparent` value; ("", "") when it is
    missing or malformed."""
    if not value:
        return "", ""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match[1] == "0" * 32 or match[2] == "0" * 16:
        return "", ""
    return match[1], match[2]


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces: an OTLP endpoint is set (for traces or for every
    signal), the SDK is not disabled and the traces exporter is not `none`."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or not endpoint.strip():
        return False
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    return environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"


@dataclass(slots=True)
class RequestScope:
    """One request as the observers see it."""

    protocol: str
    """tfserving-grpc, kserve-grpc, tfserving-rest, kserve-rest or http."""
    operation: str
    """The RPC (`tensorflow.serving.PredictionService/Predict`) or `METHOD /route`."""
    peer: str
    trace_id: str
    """32 hex digits: the request's trace (from its span, else from the client's `traceparent`), or ""."""
    span_id: str
    """16 hex digits: the request's span, else the client's span that sent it, or ""."""
    started_ns: int
    """`time.time_ns()` when the request arrived."""
    started: float
    """`time.perf_counter()` at the same moment (latency)."""
    span: Any = None
    """The request's OpenTelemetry span (a non-recording one when the sampler left it out); None without tracing."""
    model: str = ""
    """The model that answered (set by the inference service)."""
    version: str = ""
    """The version that answered (set by the inference service: a REST path need not name one)."""


REQUEST: ContextVar[RequestScope | None] = ContextVar("kdeploy_request", default=None)
"""The request the current coroutine serves (set by the front ends only while observers are on)."""


@dataclass
class Observers:
    """Tracing, the access log and the payload log of one server (each None when off)."""

    tracing: Tracing | None = None
    access_log: AccessLog | None = None
    payload_log: PayloadLog | None = None

    @property
    def any(self) -> bool:
        return self.tracing is not None or self.access_log is not None or self.payload_log is not None

    def begin(self, protocol: str, operation: str, headers: Callable[[], Iterable[tuple[str, str]]],
              peer: str, *, kind_rpc: bool) -> RequestScope:
        """A request arrived: its scope, with its span started when tracing (the caller makes it `REQUEST`).

        Args:
            protocol: the metrics' protocol label.
            operation: RPC path or `METHOD /route`.
            headers: the request's headers or gRPC metadata (read only for the trace context).
            peer: the client's address.
            kind_rpc: a gRPC call (span attributes `rpc.*`) rather than HTTP (`http.*`).
        """
        carrier = {key.lower(): value for key, value in headers() if key.lower() in TRACE_HEADERS}
        scope = RequestScope(protocol, operation, peer, "", "", time.time_ns(), time.perf_counter())
        if self.tracing is not None:
            scope.span = self.tracing.start_request(operation, carrier, protocol, kind_rpc, scope.started_ns)
            scope.trace_id, scope.span_id = self.tracing.ids(scope.span)
        if not scope.trace_id:
            scope.trace_id, scope.span_id = parse_traceparent(carrier.get("traceparent"))
        return scope

    def end(self, scope: RequestScope, *, model: str, version: str, status: str, error: bool,
            request_bytes: Callable[[], int], response_bytes: Callable[[], int]) -> None:
        """The answer is ready: end the span, write the access line.

        Args:
            scope: what `begin` returned.
            model: the model the request named ("" for server-wide calls).
            version: the version that answered ("" when none did).
            status: the gRPC status name or the HTTP status code.
            error: whether the span is marked as an error (a server-side failure).
            request_bytes: the request's size (asked only when the access log is on).
            response_bytes: the answer's size (same).
        """
        model, version = scope.model or model, scope.version or version
        if scope.span is not None and self.tracing is not None:
            self.tracing.end_request(scope.span, model, version, status, error)
        if self.access_log is not None:
            self.access_log.write(scope, model=model, version=version, status=status,
                                  latency_s=time.perf_counter() - scope.started,
                                  request_bytes=request_bytes(), response_bytes=response_bytes())

    def close(self) -> None:
        """Flush and stop every observer (spans exported, queued log records written)."""
        for observer in (self.payload_log, self.access_log, self.tracing):
            if observer is not None:
                try:
                    observer.close()
                except Exception:  # a sink that fails to flush must not stop the server's shutdown
                    logger.exception("closing %s failed", type(observer).__name__)


_HTTP_MODEL = re.compile(r"^/v(?P<api>[12])/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+))?")


def http_route(method: str, path: str) -> tuple[str, str, str, str]:
    """What the HTTP front end knows of a request from its path alone, whichever API route it is.

    Returns:
        (protocol, span name with the model and version as placeholders, model, version): `/v1/models/...` is TF
        Serving's REST API, `/v2/models/...` KServe v2's; other paths keep only the method in the span name (the
        route's text would make span names unbounded).
    """
    path = path.split("?", 1)[0]
    match = _HTTP_MODEL.match(path)
    if match is None:
        return "http", method, "", ""
    route = "/v{api}/models/{{model}}".format(api=match["api"])
    if match["version"] is not None:
        route += "/versions/{version}"
    route += path[match.end():]
    protocol = "tfserving-rest" if match["api"] == "1" else "kserve-rest"
    return protocol, f"{method} {route}", match["model"], match["version"] or ""


def build_observers(config: ServeConfig, metrics: ServerMetrics, environ: Mapping[str, str],
                    service_version: str = "") -> Observers | None:
    """The server's observers from its configuration and the OTEL_* variables; None when every one is off.

    Raises:
        UsageError: for a sink that cannot be opened or an OTLP setting kdeploy cannot honour.
    """
    observers = Observers()
    if tracing_wanted(environ):
        from kdeploy.serve.tracing import Tracing

        observers.tracing = Tracing(environ, service_version)
    try:
        if config.access_log:
            from kdeploy.serve.access_log import AccessLog

            observers.access_log = AccessLog(config.access_log, config.log_queue_size, metrics)
        if config.payload_log_rate > 0:
            from kdeploy.serve.payload_log import CloudEventsPoster, PayloadLog, RotatingFile

            file = None
            if config.payload_log_file is not None:
                file = RotatingFile(config.payload_log_file, config.payload_log_max_mb << 20,
                                    config.payload_log_backups)
            poster = CloudEventsPoster(config.payload_log_url) if config.payload_log_url else None
            observers.payload_log = PayloadLog(config.payload_log_rate, file=file, poster=poster,
                                               capacity=config.log_queue_size, metrics=metrics,
                                               namespace=environ.get("POD_NAMESPACE", ""))
    except OSError as exc:
        observers.close()
        where = f" {exc.filename}" if exc.filename else ""
        raise UsageError(f"cannot open the log file{where}: {exc.strerror or exc}") from None
    except UsageError:
        observers.close()
        raise
    return observers if observers.any else None

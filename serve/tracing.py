"""OpenTelemetry traces over OTLP gRPC, configured by the standard `OTEL_*` variables as every SDK reads them.

Imported only when `observe.tracing_wanted` finds an OTLP endpoint. The SDK itself reads the rest:
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` / `_HEADERS` / `_INSECURE` / `_CERTIFICATE` / `_TIMEOUT` (the exporter),
`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the provider's sampler; default parent-based always-on, so a
client's sampled flag is honoured), `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource) and
`OTEL_BSP_*` (the batch span processor, which exports on a thread of its own, off the request path).

Each request gets a SERVER span named after its RPC (`inference.GRPCInferenceService/ModelInfer`) or HTTP route
(`POST /v1/models/{model}:predict`), a child of the client's W3C `traceparent` when one came. The inference service
adds children after the fact, with the times it measured: `kdeploy.queue` (waiting in the batching queue),
`kdeploy.batch` (the batch this request ran in, with its rows and requests) and, under it or directly under the
request, `kdeploy.run` (the runtime's run). Spans of other threads need no context hand-over that way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kdeploy.common.errors import UsageError

logger = logging.getLogger(__name__)

SCOPE_NAME = "kdeploy.serve"
_GRPC_ONLY = ("grpc",)


def _check_protocol(environ: Mapping[str, str]) -> None:
    """kdeploy ships the OTLP gRPC exporter only: refuse another OTLP protocol in one line instead of ignoring it."""
    for key in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(key, "").strip().lower()
        if value:
            if value not in _GRPC_ONLY:
                raise UsageError(f"{key}={value}: kdeploy exports traces over OTLP gRPC only; set it to grpc (or "
                                 "unset it) and point the endpoint at the collector's gRPC port (4317)")
            return


class Tracing:
    """A tracer provider of this server's own (not the global one) with an OTLP gRPC exporter."""

    def __init__(self, environ: Mapping[str, str], service_version: str = "") -> None:
        """
        Args:
            environ: the environment holding the `OTEL_*` settings (protocol check only: the SDK reads
                `os.environ` itself).
            service_version: `service.version` of the resource, unless OTEL_RESOURCE_ATTRIBUTES sets it.

        Raises:
            UsageError: for an OTLP protocol other than grpc.
        """
        _check_protocol(environ)
        # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; kdeploy only fills what they leave.
        resource = Resource.create()
        extra = {}
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            extra["service.name"] = "kdeploy"
        if service_version and "service.version" not in resource.attributes:
            extra["service.version"] = service_version
        resource = resource.merge(Resource(extra))
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer(SCOPE_NAME)
        self._propagator = TraceContextTextMapPropagator()
        logger.info("tracing on: OTLP gRPC to %s",
                    environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    def start_request(self, operation: str, carrier: Mapping[str, str], protocol: str, rpc: bool,
                      start_ns: int) -> Any:
        """The request's SERVER span, a child of the client's trace context when `carrier` has one."""
        parent = self._propagator.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {"kdeploy.protocol": protocol}
        if rpc:
            service, _, method = operation.partition("/")
            attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        else:
            verb, _, route = operation.partition(" ")
            attributes["http.request.method"] = verb
            if route:
                attributes["http.route"] = route
        return self._tracer.start_span(operation, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                       start_time=start_ns)

    @staticmethod
    def ids(span: Any) -> tuple[str, str]:
        """The span's trace id and span id in hex ("" each when the span has no valid context)."""
        context = span.get_span_context()
        if not context.is_valid:
            return "", ""
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    @staticmethod
    def end_request(span: Any, model: str, version: str, status: str, error: bool) -> None:
        if span.is_recording():
            if model:
                span.set_attribute("kdeploy.model", model)
            if version:
                span.set_attribute("kdeploy.model_version", int(version) if version.isdigit() else version)
            if status.isdigit():
                span.set_attribute("http.response.status_code", int(status))
            else:
                span.set_attribute("rpc.grpc.status_code", status)
            if error:
                span.set_status(Status(StatusCode.ERROR, status))
        span.end()

    def child(self, parent: Any, name: str, start_ns: int, end_ns: int,
              attributes: Mapping[str, Any] | None = None) -> Any:
        """A finished child span of `parent` (nothing when the parent is not sampled); returns it for its own
        children."""
        # A finished parent (the batch span) no longer records, but its sampled flag still tells.
        if parent is None or not parent.get_span_context().trace_flags.sampled:
            return None
        span = self._tracer.start_span(name, context=trace.set_span_in_context(parent), kind=SpanKind.INTERNAL,
                                       attributes=attributes, start_time=start_ns)
        span.end(end_time=max(start_ns, end_ns))
        return span

    def close(self) -> None:
        """Export what is buffered and stop the exporter."""
        self._provider.shutdown()

"""An OTLP trace receiver that counts and discards spans: where a benchmarked server's traces go.

`start()` runs OTLP's gRPC TraceService (from opentelemetry-proto) on a free loopback port in this process and
returns the endpoint to put in OTEL_EXPORTER_OTLP_ENDPOINT. A collector's own cost is left out on purpose: the
benchmark measures what tracing costs the server.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Discard(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # noqa: N802 - OTLP's method name
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def start() -> tuple[str, grpc.Server, _Discard]:
    """Start the receiver; returns its endpoint URL, the server (stop it when done) and the span counter."""
    sink = _Discard()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"http://127.0.0.1:{port}", server, sink

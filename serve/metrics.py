"""Prometheus metrics of one server, on a registry of its own (nothing is registered at import time).

Names and labels (documented in README):
- `kdeploy_requests_total{model,version,protocol,status}`: requests answered, by gRPC status name (REST too).
- `kdeploy_request_latency_seconds{model,protocol}`: time from request decoded to response ready.
- `kdeploy_queue_seconds{model}`: time a request waited in the batching queue.
- `kdeploy_inference_seconds{model,version}`: time in the runtime per executed batch.
- `kdeploy_batch_size{model}`: rows per executed batch (after merging; before padding).
- `kdeploy_inflight_requests{model}`: requests being computed or queued.
- `kdeploy_queue_depth{model}`: requests waiting in the batching queue.
- `kdeploy_model_version_state{model,version}`: TF Serving's state number (10 START ... 30 AVAILABLE ... 50 END).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Fine enough for sub-millisecond servers: 50 µs to 10 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "_unknown"
"""Label for requests naming a model this server does not serve (keeps label values bounded)."""


class ServerMetrics:
    """The server's metrics and the registry that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("kdeploy_requests_total", "Requests answered.",
                                ["model", "version", "protocol", "status"], registry=r)
        self.latency = Histogram("kdeploy_request_latency_seconds", "Request latency inside the server.",
                                 ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("kdeploy_queue_seconds", "Time spent waiting in the batching queue.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram("kdeploy_inference_seconds", "Runtime time per executed batch.",
                                        ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("kdeploy_batch_size", "Rows per executed batch.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        # multiprocess_mode only matters with --workers (PROMETHEUS_MULTIPROC_DIR set): how workers' values add up.
        self.inflight = Gauge("kdeploy_inflight_requests", "Requests being queued or computed.", ["model"],
                              registry=r, multiprocess_mode="livesum")
        self.queue_depth = Gauge("kdeploy_queue_depth", "Requests waiting in the batching queue.", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.version_state = Gauge("kdeploy_model_version_state", "Model version state (TF Serving's numbers).",
                                   ["model", "version"], registry=r, multiprocess_mode="livemax")

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: a dictionary lookup per request instead of prometheus-client's
        validation and lock. Label values are bounded (known models, versions, statuses), so is the cache."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_execution(self, model: str, version: int, seconds: float, rows: int) -> None:
        """One runtime call: its duration and how many rows it computed."""
        self.labelled(self.inference_time, model, str(version)).observe(seconds)
        self.labelled(self.batch_size, model).observe(rows)

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Expose `GET /metrics` on host:port (0 picks a free port); returns the HTTP server and its port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_address[1]


def serve_multiprocess(directory: str, host: str, port: int) -> tuple[object, int]:
    """Expose the metrics that worker processes write under `directory` (PROMETHEUS_MULTIPROC_DIR), summed."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]

"""Prometheus metrics of one server, on a registry of its own (nothing is registered at import time).

Every metric is created in `ServerMetrics.__init__`; docs/reference/metrics.md is generated from that registry (name,
type, help, labels) and `LABELS` below, so a metric added here is documented by `make docs`.
"""

from __future__ import annotations

import bisect
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from kdeploy.serve.metrics_http import serve_metrics

# Fine enough for sub-millisecond servers: 50 µs to 10 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SYNC_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)
LABELS: dict[str, str] = {
    "model": "model name (`_unknown` for requests naming a model the server does not serve, so values stay bounded)",
    "version": "model version number",
    "protocol": "`tfserving-grpc`, `kserve-grpc`, `tfserving-rest` or `kserve-rest`",
    "status": "gRPC status name (`OK`, `INVALID_ARGUMENT`, ...); REST answers count under the matching name",
    "log": "`payload` (`--payload-log-*`) or `access` (`--access-log`)",
    "reason": "`queue_full` (the writer fell behind; requests never wait for it) or `sink_error` (the file or URL "
              "refused the records)",
    "kind": "how an object-store poll failed: `denied`, `not_found`, `unreachable`, `refused` (a version that does "
            "not match its manifest), `exists`, `other`",
}
"""What each label holds (for the reference page)."""
UNKNOWN_MODEL = "_unknown"
"""Label for requests naming a model this server does not serve (keeps label values bounded)."""


class ServerMetrics:
    """The server's metrics and the registry that exposes them.

    The request path only adds to plain counters here (`request_done`, `execution`, ...: a lock, a dictionary and
    a bisect, about a microsecond); they reach prometheus-client's metrics in `flush()`, which runs before every
    collection of the registry (a scrape) and, for worker processes whose values live in prometheus-client's
    multiprocess files, on a timer too (`flush_every`). Calling prometheus-client per request cost
    about 10 µs (a lock and a Python loop over the buckets per histogram observation, five updates per request):
    a quarter of the server's own time on a small model.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_FlushFirst(self))  # registered before the metrics: collected (flushed) before them
        self.requests = Counter("kdeploy_requests_total", "Requests answered.",
                                ["model", "version", "protocol", "status"], registry=r)
        self.latency = Histogram("kdeploy_request_latency_seconds",
                                 "Request latency inside the server, from request decoded to response ready.",
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
        self.log_dropped_total = Counter("kdeploy_log_records_dropped_total",
                                         "Payload or access log records dropped (queue full) or lost (sink error).",
                                         ["log", "reason"], registry=r)
        self.version_state = Gauge("kdeploy_model_version_state",
                                   "Model version state, TF Serving's numbers: 10 START, 20 LOADING, 30 AVAILABLE, "
                                   "40 UNLOADING, 50 END.", ["model", "version"], registry=r,
                                   multiprocess_mode="livemax")
        self.repository_poll_errors = Counter("kdeploy_repository_poll_errors_total",
                                              "Object-store listings and downloads that failed.", ["model", "kind"],
                                              registry=r)
        self.repository_sync_seconds = Histogram("kdeploy_repository_sync_seconds",
                                                 "Time to bring one version from an object store into the cache.",
                                                 ["model"], buckets=SYNC_BUCKETS, registry=r)

        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._added: dict[tuple[Any, tuple[str, ...]], float] = {}
        """Counter and gauge changes since the last flush, by (metric, label values)."""
        self._observed: dict[tuple[Any, tuple[str, ...]], list[float]] = {}
        """Histogram observations since the last flush: a count per bucket, then their sum."""
        self._bounds = {id(h): h._upper_bounds for h in  # noqa: SLF001 (prometheus-client's own bucket list)
                        (self.latency, self.queue_time, self.inference_time, self.batch_size)}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._stop_flushing: threading.Event | None = None
        self._inflight_source: Callable[[], Mapping[str, int]] | None = None

    def request_done(self, model: str, version: str, protocol: str, status: str, seconds: float) -> None:
        """One answered request (any status) and its latency inside the server."""
        with self._lock:
            self._add(self.requests, (model, version, protocol, status), 1)
            self._observe(self.latency, (model, protocol), seconds)

    def execution(self, model: str, version: int, seconds: float, rows: int) -> None:
        """One runtime call: its duration and how many rows it computed."""
        with self._lock:
            self._observe(self.inference_time, (model, str(version)), seconds)
            self._observe(self.batch_size, (model,), rows)

    def repository_poll_error(self, model: str, kind: str) -> None:
        """An object-store listing or download of `model` failed (rare: straight to prometheus-client)."""
        self.repository_poll_errors.labels(model, kind).inc()

    def repository_synced(self, model: str, seconds: float) -> None:
        """A version of `model` arrived in the cache."""
        self.repository_sync_seconds.labels(model).observe(seconds)

    def sample_inflight(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Read the in-flight requests per model from `source` at each flush (the model manager counts them
        anyway: the request path does nothing for this gauge)."""
        self._inflight_source = source

    def log_dropped(self, log: str, reason: str, count: int = 1) -> None:
        """Records of the payload or access log that were not written (`reason`: queue_full or sink_error)."""
        with self._lock:
            self._add(self.log_dropped_total, (log, reason), count)

    def queue_changed(self, model: str, delta: int) -> None:
        with self._lock:
            self._add(self.queue_depth, (model,), delta)

    def queued(self, model: str, seconds: list[float]) -> None:
        """How long each request of one batch waited in the queue."""
        with self._lock:
            for value in seconds:
                self._observe(self.queue_time, (model,), value)

    def _add(self, metric: Any, labels: tuple[str, ...], amount: float) -> None:
        key = (metric, labels)
        self._added[key] = self._added.get(key, 0) + amount

    def _observe(self, metric: Any, labels: tuple[str, ...], value: float) -> None:
        bounds = self._bounds[id(metric)]
        key = (metric, labels)
        counts = self._observed.get(key)
        if counts is None:
            counts = self._observed[key] = [0.0] * (len(bounds) + 1)
        counts[bisect.bisect_left(bounds, value)] += 1  # prometheus' bucket: the first bound >= value
        counts[-1] += value

    def flush(self) -> None:
        """Move what was counted since the last flush into prometheus-client's metrics."""
        with self._flush_lock:
            with self._lock:
                added, self._added = self._added, {}
                observed, self._observed = self._observed, {}
            for (metric, labels), amount in added.items():
                if amount:
                    self._child(metric, labels).inc(amount)
            for (metric, labels), counts in observed.items():
                child = self._child(metric, labels)
                for index, count in enumerate(counts[:-1]):
                    if count:
                        child._buckets[index].inc(count)  # noqa: SLF001 (observe() would add them one by one)
                child._sum.inc(counts[-1])  # noqa: SLF001
            if self._inflight_source is not None:
                for model, count in self._inflight_source().items():
                    self._child(self.inflight, (model,)).set(count)

    def flush_every(self, seconds: float) -> None:
        """Flush on a thread of its own (worker processes: the parent reads their values from files)."""
        stop = self._stop_flushing = threading.Event()

        def run() -> None:
            while not stop.wait(seconds):
                self.flush()

        threading.Thread(target=run, name="metrics-flush", daemon=True).start()

    def close(self) -> None:
        """Stop the flushing thread, after a last flush."""
        if self._stop_flushing is not None:
            self._stop_flushing.set()
        self.flush()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (what `GET /metrics` answers), every request counted."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int, tls_context: ssl.SSLContext | None = None) -> tuple[object, int]:
        """Expose `GET /metrics` on host:port (0 picks a free port; HTTPS with `tls_context`); returns the HTTP
        server and its port."""
        return serve_metrics(self.registry, host, port, tls_context)


class _FlushFirst:
    """A collector that yields nothing and flushes the server's counters: the registry collects it first."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self._metrics.flush()
        return iter(())

    def describe(self) -> Iterator[Metric]:
        return iter(())


def serve_multiprocess(directory: str, host: str, port: int,
                       tls_context: ssl.SSLContext | None = None) -> tuple[object, int]:
    """Expose the metrics that worker processes write under `directory` (PROMETHEUS_MULTIPROC_DIR), summed."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return serve_metrics(registry, host, port, tls_context)

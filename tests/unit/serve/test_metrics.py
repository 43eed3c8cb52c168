"""The server's metrics: counted cheaply on the request path, exposed exactly as prometheus-client would count."""

import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kdeploy.serve.metrics import LATENCY_BUCKETS, ServerMetrics

LATENCIES = [0.00005, 0.00004, 0.0003, 0.001, 0.0010001, 7.0, 11.0, 0.0]  # on, below, between and past the bounds


def exposition(registry: CollectorRegistry, prefix: str) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line.startswith(prefix) and "_created" not in line)


def test_counted_values_reach_the_registry_as_prometheus_would_count_them():
    metrics = ServerMetrics()
    for seconds in LATENCIES:
        metrics.request_done("m", "1", "kserve-grpc", "OK", seconds)
    metrics.request_done("m", "", "kserve-grpc", "NOT_FOUND", 0.001)
    for rows in (1, 3, 32, 33):
        metrics.execution("m", 1, 0.002, rows)
    metrics.queued("m", [0.001, 0.002])
    inflight = {"m": 1, "other": 0}
    metrics.sample_inflight(lambda: inflight)
    metrics.queue_changed("m", +2)

    sample = metrics.registry.get_sample_value  # collecting flushes first
    assert sample("kdeploy_request_latency_seconds_count", {"model": "m", "protocol": "kserve-grpc"}) == 9
    assert sample("kdeploy_requests_total", {"model": "m", "version": "1", "protocol": "kserve-grpc",
                                             "status": "OK"}) == len(LATENCIES)
    assert sample("kdeploy_batch_size_count", {"model": "m"}) == 4
    assert sample("kdeploy_batch_size_sum", {"model": "m"}) == 69
    assert sample("kdeploy_batch_size_bucket", {"model": "m", "le": "32.0"}) == 3
    assert sample("kdeploy_inference_seconds_count", {"model": "m", "version": "1"}) == 4
    assert sample("kdeploy_queue_seconds_count", {"model": "m"}) == 2
    assert sample("kdeploy_inflight_requests", {"model": "m"}) == 1
    assert sample("kdeploy_inflight_requests", {"model": "other"}) == 0
    inflight["m"] = 0
    assert sample("kdeploy_inflight_requests", {"model": "m"}) == 0  # read again at each scrape
    assert sample("kdeploy_queue_depth", {"model": "m"}) == 2


def test_histogram_buckets_match_prometheus_client_observe_bit_for_bit():
    metrics, registry = ServerMetrics(), CollectorRegistry()
    reference = Histogram("kdeploy_request_latency_seconds", "x", ["model", "protocol"], buckets=LATENCY_BUCKETS,
                          registry=registry)
    for seconds in LATENCIES:
        metrics.request_done("m", "1", "kserve-grpc", "OK", seconds)
        reference.labels("m", "kserve-grpc").observe(seconds)
    metrics.flush()
    metrics.request_done("m", "1", "kserve-grpc", "OK", 0.0002)  # a second flush adds to the first
    reference.labels("m", "kserve-grpc").observe(0.0002)
    assert exposition(metrics.registry, "kdeploy_request_latency_seconds") == \
        exposition(registry, "kdeploy_request_latency_seconds")


def test_counts_from_many_threads_are_all_kept_and_a_flushing_thread_moves_them():
    metrics = ServerMetrics()
    metrics.flush_every(0.01)

    def count():
        for _ in range(2000):
            metrics.request_done("m", "1", "kserve-grpc", "OK", 0.001)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics.close()
    labels = {"model": "m", "version": "1", "protocol": "kserve-grpc", "status": "OK"}
    assert metrics.registry.get_sample_value("kdeploy_requests_total", labels) == 8000

import numpy as np
import pytest

from kdeploy.loadtest.recorder import LatencyRecorder, RequestError, error_key, load_records
from kdeploy.loadtest.shapes import plan_for
from kdeploy.loadtest.slo import parse_slo
from kdeploy.loadtest.stats import capacity, latency_stats, order_statistic, per_second, stage_results, summarize


def locust_bucket(ms: float) -> int:
    """Locust 2.x's `bucket_response_time`: how it rounds each response time before counting it."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


def locust_percentile(values: np.ndarray, p: float) -> int:
    """Locust 2.x's `calculate_response_time_percentile` over its rounded counts."""
    counts: dict[int, int] = {}
    for v in values:
        counts[locust_bucket(v)] = counts.get(locust_bucket(v), 0) + 1
    wanted, seen = int(len(values) * p), 0
    for key in sorted(counts, reverse=True):
        seen += counts[key]
        if len(values) - seen <= wanted:
            return key
    return 0


@pytest.mark.parametrize("seed", range(5))
def test_exact_percentile_rounds_to_locusts(seed):
    """Same rank rule as Locust: rounding the exact percentile the way Locust rounds gives Locust's number."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(1.0, 1.2, size=int(rng.integers(1, 3000)))
    ordered = np.sort(values)
    for p in (0.5, 0.66, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert locust_bucket(order_statistic(ordered, p)) == locust_percentile(values, p)


def recorder_with(latencies, errors=None, start=1000.0, spacing=0.01) -> LatencyRecorder:
    recorder = LatencyRecorder()
    recorder.clear(test_start=start)
    for i, ms in enumerate(latencies):
        exception = None if errors is None or errors[i] is None else RequestError(errors[i])
        recorder.on_request(response_time=ms, exception=exception, start_time=start + i * spacing,
                            request_type="grpc", name="Predict m", response_length=10)
    return recorder


def test_summary_counts_failures_by_error_and_orders_percentiles():
    errors = [None] * 90 + ["INVALID_ARGUMENT: bad"] * 7 + ["UNAVAILABLE: gone"] * 3
    records = recorder_with(list(np.linspace(1.0, 10.0, 100)), errors).records()
    summary = summarize(records)
    assert summary["requests"] == 100 and summary["failures"] == 10 and summary["error_rate"] == 0.1
    assert summary["failures_by_error"] == {"INVALID_ARGUMENT: bad": 7, "UNAVAILABLE: gone": 3}
    latency = summary["latency_ms"]
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # Throughput is over test start to last completion: 99 * 10 ms + 10 ms.
    assert summary["elapsed_s"] == pytest.approx(1.0) and summary["rps"] == pytest.approx(100.0)
    assert summary["send_rate"] == pytest.approx(100.0)  # 99 gaps of 10 ms


def test_empty_run_has_no_percentiles():
    summary = summarize(LatencyRecorder().records())
    assert summary["requests"] == 0 and summary["rps"] == 0.0 and summary["latency_ms"]["p99"] is None
    assert latency_stats(np.zeros(0))["max"] is None


def test_records_round_trip_through_the_file_and_the_worker_report(tmp_path):
    worker = recorder_with([1.5, 2.25, 3.125], [None, "HTTP 400: bad", None])
    chunk = worker.take_chunk()
    assert worker.take_chunk() == {"start": [], "ms": [], "error": []}  # nothing is shipped twice
    master = LatencyRecorder()
    master.clear(test_start=1000.0)
    master.add_chunk(chunk)
    master.save(tmp_path / "latencies.npz")
    records = load_records(tmp_path / "latencies.npz")
    assert records.latency_ms.tolist() == [1.5, 2.25, 3.125]
    assert [records.errors[e] if e >= 0 else None for e in records.error] == [None, "HTTP 400: bad", None]
    assert records.test_start == 1000.0 and list(tmp_path.iterdir()) == [tmp_path / "latencies.npz"]


def test_error_keys_match_locusts_grouping():
    assert error_key(RequestError("INVALID_ARGUMENT: x")) == "INVALID_ARGUMENT: x"
    assert error_key(ConnectionRefusedError(111, "refused")) == "ConnectionRefusedError(111, 'refused')"
    assert error_key("<Thing object at 0x7f00deadbeef>") == "<Thing object at 0x....>"


def test_requests_without_a_time_are_left_out_as_locust_does():
    recorder = LatencyRecorder()
    recorder.on_request(response_time=None)
    assert len(recorder.records()) == 0


def test_per_second_windows_by_completion():
    records = recorder_with([1.0] * 10 + [5.0] * 20, spacing=0.1).records()
    series = per_second(records)
    assert series["t"].tolist() == [0.0, 1.0, 2.0]
    assert series["rps"].tolist() == [10.0, 10.0, 10.0]
    assert series["p50"].tolist() == [1.0, 5.0, 5.0]


def test_stages_and_capacity():
    # 2 users at 1 ms for 4 s, then 4 users at 30 ms: a p99<10ms SLO holds at the first step only.
    latencies = [1.0] * 400 + [30.0] * 400
    records = recorder_with(latencies, spacing=0.01).records()
    plan = plan_for("step", 4, 10.0, 8.0, step_users=2)
    stages = stage_results(records, plan, parse_slo("p99<10ms"))
    assert [s["users"] for s in stages] == [2, 4] and [s["slo_held"] for s in stages] == [True, False]
    assert stages[0]["start_s"] == 1.0  # the first second of a step is left out while users start
    assert stages[0]["rps"] == pytest.approx(100.0)
    assert capacity(stages) == {"rps": stages[0]["rps"], "users": 2, "latency_ms": stages[0]["latency_ms"]}
    assert capacity([dict(s, slo_held=False) for s in stages]) is None

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.loadtest.slo import parse_slo, parse_term, percentile_of, slo_verdict


def summary(**latency):
    return {"requests": 1000, "error_rate": 0.002, "rps": 250.0,
            "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": 40.0, "mean": 3.0, "max": 90.0, **latency}}


@pytest.mark.parametrize("text, metric, op, threshold", [
    ("p99<50ms", "p99", "<", 50.0),
    ("p99 <= 50", "p99", "<=", 50.0),
    ("p99.9<0.2s", "p99.9", "<", 200.0),
    ("max<500us", "max", "<", 0.5),
    ("errors<0.1%", "errors", "<", 0.1),
    ("rps>=200/s", "rps", ">=", 200.0),
])
def test_parse_term(text, metric, op, threshold):
    term = parse_term(text)
    assert (term.metric, term.op, term.threshold) == (metric, op, threshold)


@pytest.mark.parametrize("text", ["p99", "p99<", "p99<5%", "errors<5ms", "rps<5ms", "latency<5ms", "p0<1ms", "p101<1"])
def test_parse_term_refuses(text):
    with pytest.raises(UsageError, match="SLO term"):
        parse_term(text)


def test_empty_slo_is_a_usage_error():
    with pytest.raises(UsageError, match="empty"):
        parse_slo(" , ")


def test_evaluate_reports_each_term_and_the_verdict():
    result = parse_slo("p99<50ms,errors<0.1%,rps>200").evaluate(summary())
    assert [t["held"] for t in result["terms"]] == [True, False, True]
    assert result["terms"][1]["actual"] == pytest.approx(0.2)
    assert result["held"] is False
    assert parse_slo("p99<50ms,rps>200").evaluate(summary())["held"] is True


def test_impossible_objective_never_holds_and_no_requests_hold_nothing():
    assert parse_slo("p99<0.001ms").evaluate(summary())["held"] is False
    empty = {"requests": 0, "error_rate": 0.0, "rps": 0.0, "latency_ms": {"p99": None}}
    assert parse_slo("errors<1%,p99<1s").evaluate(empty)["held"] is False


def test_verdict_of_a_step_run_is_whether_a_capacity_was_found():
    assert slo_verdict({"slo": None}) is None
    assert slo_verdict({"slo": {"held": False}}) is False
    assert slo_verdict({"slo": {"held": False}, "steps": [], "capacity": {"rps": 10}}) is True
    assert slo_verdict({"slo": {"held": True}, "steps": [], "capacity": None}) is False


def test_percentile_of():
    assert percentile_of("p99.9") == pytest.approx(0.999) and percentile_of("max") is None

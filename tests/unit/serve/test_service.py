"""The inference service every adapter calls, over fake backends, with and without dynamic batching."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from kdeploy.serve.batching import BatchingParameters
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ErrorKind, ServeError
from tests.unit.serve.fakes import TWO_INPUTS, EchoBackend, FakeLoader, make_manager, wait_until, write_version

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@dataclass
class Served:
    service: InferenceService
    models: ModelManager
    loader: FakeLoader
    metrics: ServerMetrics

    @property
    def backend(self) -> EchoBackend:
        return self.loader.backend(1)

    def infer(self, feed, model: str = "m", **options):
        with self.service.serving(model) as served:
            return self.service.infer(served, feed, **options)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def batching(max_batch_size: int = 4) -> BatchingParameters:
    return BatchingParameters(max_batch_size=max_batch_size, batch_timeout_micros=0, num_batch_threads=1)


@pytest.fixture(params=["direct", "batched"])
def served(request, tmp_path):
    write_version(tmp_path, "m", 1)
    write_version(tmp_path, "two", 1, TWO_INPUTS)
    loader, metrics = FakeLoader(), ServerMetrics()
    models = make_manager(tmp_path, loader, "m", "two", metrics=metrics,
                          batching=batching() if request.param == "batched" else None)
    models.load_all()
    yield Served(InferenceService(models, metrics), models, loader, metrics)
    models.close()


def test_a_request_gets_every_output_of_the_version_it_ran_on(served):
    result = served.infer({"x": X})
    assert result.served.name == "m" and result.served.version == 1 and list(result.outputs) == ["y", "z"]
    np.testing.assert_array_equal(result.outputs["y"], 2 * X + 1)
    np.testing.assert_array_equal(result.outputs["z"], 3 * X + 1)
    assert result.outputs["y"].dtype == np.float32


def test_output_names_select_the_outputs(served):
    result = served.infer({"x": X}, output_names=["z"])
    assert list(result.outputs) == ["z"]
    np.testing.assert_array_equal(result.outputs["z"], 3 * X + 1)


@pytest.mark.parametrize("model, feed, words", [
    ("m", {}, "the request has no inputs; model 'm' expects ['x']"),
    ("m", {"x": X, "w": X}, "unknown input 'w'; the model's inputs are ['x']"),
    ("two", {"a": np.zeros((2, 2), np.float32)}, "missing input 'b'; the model's inputs are ['a', 'b']"),
    ("m", {"x": X.astype(np.float64)}, "input 'x': expected dtype float32, got float64"),
    ("m", {"x": np.zeros((2, 4), np.float32)}, "input 'x': expected shape [-1, 3], got [2, 4]"),
    ("m", {"x": np.zeros(3, np.float32)}, "input 'x': expected shape [-1, 3], got [3]"),
    ("two", {"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 2), np.int32)},
     "inputs disagree on the batch size: {'a': 2, 'b': 3}"),
])
def test_a_feed_that_does_not_fit_is_refused_before_the_runtime(served, model, feed, words):
    backend = served.loader.backend(1, model)
    warm_up = len(backend.calls)
    with pytest.raises(ServeError) as error:
        served.infer(feed, model=model)
    assert error.value.kind is ErrorKind.INVALID_INPUT and error.value.message == words
    assert len(backend.calls) == warm_up
    stats = served.service.statistics(model, 1)
    assert (stats.fail.count, stats.success.count, stats.inference_count) == (1, 0, 0)


def test_an_unknown_output_name_is_invalid(served):
    warm_up = len(served.backend.calls)
    with pytest.raises(ServeError) as error:
        served.infer({"x": X}, output_names=["y", "q"])
    assert error.value.kind is ErrorKind.INVALID_INPUT
    assert error.value.message == "unknown output 'q'; the model's outputs are ['y', 'z']"
    assert len(served.backend.calls) == warm_up


def test_a_request_whose_deadline_passed_is_not_computed(served):
    warm_up = len(served.backend.calls)
    with pytest.raises(ServeError) as error:
        served.infer({"x": X}, deadline=time.monotonic() - 1)
    assert error.value.kind is ErrorKind.DEADLINE and "deadline exceeded" in error.value.message
    assert served.service.statistics("m", 1).fail.count == 1
    result = served.infer({"x": X}, deadline=time.monotonic() + 60)
    np.testing.assert_array_equal(result.outputs["y"], 2 * X + 1)
    assert served.backend.rows[warm_up:] == [2]  # only the second request ran


def test_a_runtime_failure_is_internal_hides_the_details_and_the_server_keeps_serving(served, caplog):
    served.backend.failing = True
    with caplog.at_level(logging.ERROR), pytest.raises(ServeError) as error:
        served.infer({"x": X})
    assert error.value.kind is ErrorKind.INTERNAL
    assert error.value.message == "model 'm' version 1 failed to run the request"
    assert "segfault in libfake.so" in caplog.text  # the details go to the log, not to the client
    served.backend.failing = False
    np.testing.assert_array_equal(served.infer({"x": X}).outputs["y"], 2 * X + 1)
    stats = served.service.statistics("m", 1)
    assert (stats.fail.count, stats.success.count) == (1, 1)


def test_statistics_count_requests_rows_and_runs(served):
    served.infer({"x": X})
    served.infer({"x": np.ones((3, 3), np.float32)})
    served.infer({"x": np.ones((5, 3), np.float32)})  # more than max_batch_size: runs alone when batching
    stats = served.service.statistics("m", 1)
    assert (stats.success.count, stats.fail.count, stats.inference_count, stats.execution_count) == (3, 0, 10, 3)
    assert sorted(stats.batch_sizes) == [2, 3, 5] and all(d.count == 1 for d in stats.batch_sizes.values())
    assert stats.compute_infer.count == stats.compute_input.count == stats.compute_output.count == 3
    assert stats.success.ns >= stats.compute_infer.ns > 0 and stats.last_inference_ms > 0
    assert served.service.statistics("two", 1).success.count == 0
    # The runtime's own metrics: one observation per backend run, rows summed (warm-up is not counted).
    assert served.sample("kdeploy_inference_seconds_count", model="m", version="1") == 3
    assert served.sample("kdeploy_batch_size_sum", model="m") == 10


def test_serving_holds_the_version_and_counts_the_request_in_flight(served):
    inflight = {"model": "m"}
    with served.service.serving("m") as version:
        assert version.inflight == 1 and served.sample("kdeploy_inflight_requests", **inflight) == 1
    assert version.inflight == 0 and served.sample("kdeploy_inflight_requests", **inflight) == 0
    with pytest.raises(ServeError), served.service.serving("m") as version:
        served.service.infer(version, {"w": X})
    assert version.inflight == 0 and served.sample("kdeploy_inflight_requests", **inflight) == 0
    with pytest.raises(ServeError) as error, served.service.serving("nope"):
        pass
    assert error.value.kind is ErrorKind.NOT_FOUND


def test_two_inputs_and_two_dtypes(served):
    a, b = np.ones((2, 2), np.float32), np.array([[1, 2], [3, 4]], np.int32)
    result = served.infer({"b": b, "a": a}, model="two")
    np.testing.assert_array_equal(result.outputs["s"], 2 * a + 1)
    assert result.outputs["t"].dtype == np.int32 and result.outputs["t"].tolist() == [[4, 7], [10, 13]]


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(tmp_path):
    write_version(tmp_path, "m", 1)
    loader, metrics = FakeLoader(), ServerMetrics()
    models = make_manager(tmp_path, loader, metrics=metrics, batching=batching())
    models.load_all()
    served = Served(InferenceService(models, metrics), models, loader, metrics)
    backend, gate = served.backend, threading.Event()
    warm_up = len(backend.calls)
    backend.entered.clear()
    backend.gate = gate
    feeds = [np.full((1, 3), i, np.float32) for i in range(3)]
    results: list = [None] * 3

    def call(i: int) -> None:
        results[i] = served.infer({"x": feeds[i]}).outputs["y"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    try:
        threads[0].start()
        assert backend.entered.wait(2)  # the first request runs alone (the runtime was idle) and holds it
        for thread in threads[1:]:
            thread.start()
        assert wait_until(lambda: served.sample("kdeploy_queue_depth", model="m") == 2)
    finally:
        gate.set()
        for thread in threads:
            thread.join(5)
        models.close()
    for feed, result in zip(feeds, results):
        np.testing.assert_array_equal(result, 2 * feed + 1)
    assert backend.rows[warm_up:] == [1, 2]  # the two that waited ran as one batch
    stats = served.service.statistics("m", 1)
    assert (stats.success.count, stats.inference_count, stats.queue.count) == (3, 3, 3)
    # Triton counts executions: two runs, of one row and of two (the batch the batcher formed).
    assert stats.execution_count == 2 and {k: d.count for k, d in stats.batch_sizes.items()} == {1: 1, 2: 1}
    assert served.sample("kdeploy_inference_seconds_count", model="m", version="1") == 2

"""The batcher against a small NumPy runtime that records the batches it is given."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kdeploy.common.errors import UsageError
from kdeploy.serve.batching import Batcher, BatchingParameters, read_batching_parameters
from kdeploy.wire.errors import ErrorKind, ServeError
from tests.unit.serve.fakes import wait_until


class RecordingBackend:
    """y = 2x + row sum; remembers each batch's shape; can be slowed down, or held until `gate` is set."""

    format = "test"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.delay = delay
        self.gate = gate
        self._lock = threading.Lock()

    def infer(self, feed):
        x = feed["x"]
        with self._lock:
            self.batches.append(x.shape)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        return {"y": 2 * x + x.sum(axis=tuple(range(1, x.ndim)), keepdims=True)}

    def close(self):
        pass


def run_concurrently(batcher, feeds, deadline=None):
    results, errors = [None] * len(feeds), [None] * len(feeds)

    def call(i):
        try:
            results[i], _ = batcher.infer(feeds[i], deadline)
        except ServeError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    backend = RecordingBackend(delay=0.005)
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1,
                                allowed_batch_sizes=(2, 4, 8))
    batcher = Batcher(backend, params, model="m", version=1)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1 + i % 3, 4)).astype(np.float32)} for i in range(24)]
    results, errors = run_concurrently(batcher, feeds)
    batcher.close()
    assert errors == [None] * 24
    for feed, result in zip(feeds, results):
        expected = 2 * feed["x"] + feed["x"].sum(axis=1, keepdims=True)
        np.testing.assert_allclose(result["y"], expected, rtol=1e-6)
    assert len(backend.batches) < 24  # merged
    assert all(shape[0] in (2, 4, 8) for shape in backend.batches)  # padded to an allowed size


def test_different_non_batch_shapes_are_never_merged():
    backend = RecordingBackend(delay=0.002)
    batcher = Batcher(backend, BatchingParameters(max_batch_size=16, batch_timeout_micros=20_000,
                                                  num_batch_threads=1), model="m", version=1)
    feeds = [{"x": np.ones((1, 3 + i % 2), np.float32) * i} for i in range(10)]
    results, errors = run_concurrently(batcher, feeds)
    batcher.close()
    assert errors == [None] * 10
    assert all(shape[1] in (3, 4) for shape in backend.batches)
    for i, result in enumerate(results):
        assert result["y"].shape == (1, 3 + i % 2)


def test_a_request_bigger_than_the_maximum_runs_alone():
    backend = RecordingBackend()
    batcher = Batcher(backend, BatchingParameters(max_batch_size=4), model="m", version=1)
    result, queued = batcher.infer({"x": np.ones((10, 2), np.float32)})
    batcher.close()
    assert result["y"].shape == (10, 2) and backend.batches == [(10, 2)] and queued == 0.0


def test_a_full_queue_refuses_at_once_with_unavailable():
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    params = BatchingParameters(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1, num_batch_threads=1)
    batcher = Batcher(backend, params, model="m", version=1)
    refused: list[ServeError] = []
    enough = threading.Condition()

    def call(i: int) -> None:
        try:
            batcher.infer({"x": np.full((1, 2), i, np.float32)})
        except ServeError as exc:
            with enough:
                refused.append(exc)
                enough.notify_all()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    # "At once": while the runtime is held, at most 2 rows run and 2 wait (the queue's capacity), so at least 8
    # of the 12 requests must be refused without waiting for the running batch to finish.
    with enough:
        enough_refused_while_held = enough.wait_for(lambda: len(refused) >= 8, timeout=10)
    gate.set()
    for thread in threads:
        thread.join(10)
    batcher.close()
    assert enough_refused_while_held, f"only {len(refused)} refused while the runtime was busy"
    assert all(e.kind is ErrorKind.UNAVAILABLE and "queue full" in e.message for e in refused)
    assert 8 <= len(refused) <= 10 and sum(rows for rows, _ in backend.batches) == 12 - len(refused)


def test_a_request_past_its_deadline_is_not_computed():
    backend = RecordingBackend(delay=0.3)
    params = BatchingParameters(max_batch_size=1 << 10, batch_timeout_micros=0, num_batch_threads=1)
    batcher = Batcher(backend, params, model="m", version=1)
    blocker = threading.Thread(target=batcher.infer, args=({"x": np.zeros((1, 2), np.float32)},))
    blocker.start()
    time.sleep(0.05)  # the worker is now busy for 0.3 s
    with pytest.raises(ServeError) as error:
        batcher.infer({"x": np.full((1, 2), 7, np.float32)}, deadline=time.monotonic() + 0.05)
    assert error.value.kind is ErrorKind.DEADLINE
    blocker.join()
    time.sleep(0.1)
    batcher.close()
    assert all(shape == (1, 2) for shape in backend.batches) and len(backend.batches) == 1


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                    "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\n")
    params = read_batching_parameters(path)
    assert (params.max_batch_size, params.batch_timeout_micros, params.allowed_batch_sizes) == (16, 500, (4, 16))
    assert params.padded_size(5) == 16 and params.warmup_sizes == (4, 16)
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(UsageError, match="end at max_batch_size"):
        read_batching_parameters(path)
    path.write_text("max_batch_sise { value: 1 }")
    with pytest.raises(UsageError, match="not a valid BatchingParameters"):
        read_batching_parameters(path)


def test_a_far_off_deadline_is_fine():
    batcher = Batcher(RecordingBackend(), BatchingParameters(max_batch_size=4, batch_timeout_micros=0),
                      model="m", version=1)
    result, _ = batcher.infer({"x": np.ones((1, 2), np.float32)}, deadline=time.monotonic() + 1e12)
    batcher.close()
    assert result["y"].shape == (1, 2)


def held_batcher():
    """A one-thread batcher whose runtime holds each batch until `gate` is set, and six one-row feeds."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                                allowed_batch_sizes=(8,))
    return gate, backend, Batcher(backend, params, model="m", version=1), [
        {"x": np.full((1, 2), i, np.float32)} for i in range(6)]


def assert_one_alone_then_five_merged(backend, feeds, results):
    assert backend.batches == [(8, 2), (8, 2)]  # the first alone, then the five that waited as one (both padded)
    for i, (outputs, _queued) in enumerate(results):
        np.testing.assert_array_equal(outputs["y"], 2 * feeds[i]["x"] + feeds[i]["x"].sum(keepdims=True))


def test_a_batch_reaches_its_event_loop_in_one_wake_up_and_each_request_gets_its_rows():
    import asyncio

    gate, backend, batcher, feeds = held_batcher()

    async def main():
        loop = asyncio.get_running_loop()
        wakeups = []
        original = loop.call_soon_threadsafe

        def counting(callback, *args):
            wakeups.append(callback)
            return original(callback, *args)

        loop.call_soon_threadsafe = counting
        first = asyncio.ensure_future(batcher.infer_async(feeds[0]))  # runs alone, held at the gate
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.infer_async(feed)) for feed in feeds[1:]]  # queue up behind it
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        return results, wakeups

    try:
        results, wakeups = asyncio.run(main())
    finally:
        batcher.close()
    assert_one_alone_then_five_merged(backend, feeds, results)
    assert len(wakeups) == 2  # one per batch, not one per request


def test_queueing_behind_a_running_batch_wakes_the_batch_thread_once_not_per_request():
    gate, backend, batcher, feeds = held_batcher()
    notified = []
    condition = batcher._cond  # noqa: SLF001 (counting the wake-ups is the point)
    original = condition.notify
    condition.notify = lambda n=1: (notified.append(n), original(n))
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.infer, feeds[0])  # runs alone, held at the gate
        assert wait_until(lambda: len(backend.batches) == 1)
        rest = [pool.submit(batcher.infer, feed) for feed in feeds[1:]]
        assert wait_until(lambda: batcher.queued_rows == 5)
        woken = len(notified)  # (notify_all, after a batch, counts here too)
        gate.set()
        results = [first.result(5)] + [f.result(5) for f in rest]
    batcher.close()
    assert woken == 2  # the first request, then the first of the five that queue behind it
    assert_one_alone_then_five_merged(backend, feeds, results)

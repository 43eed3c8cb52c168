"""Dynamic batching: concurrent requests for one model version merged into one runtime call, then split back.

As TF Serving's `--enable_batching` and Triton's `dynamic_batching`: requests wait at most `batch_timeout_micros`
for others with the same non-batch shapes, up to `max_batch_size` rows (and only while another batch is running:
with the runtime idle a request goes at once, so batching costs no latency at low load); the merged batch is padded
up to the next of `allowed_batch_sizes` so the runtime sees few shapes. The queue is bounded
(`max_enqueued_batches` batches' worth of rows): when it is full a request is refused at once with UNAVAILABLE
instead of waiting, so latency stays bounded under overload. A request whose deadline passes while it waits is
dropped and never computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import Feed, batch_size
from kdeploy.runtimes.base import Backend
from kdeploy.serve.config import BatchingParameters
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.statistics import VersionStatistics
from kdeploy.wire.errors import ErrorKind, ServeError
from kdeploy.wire.protos.messages import load_protos

logger = logging.getLogger(__name__)


def read_batching_parameters(path: Path) -> BatchingParameters:
    """Parse a batching_parameters.txt (TF Serving's text format, as `kdeploy configs` writes it).

    Raises:
        UsageError: when the file is missing or not valid.
    """
    protos = load_protos()
    message = protos.cls("tensorflow.serving.BatchingParameters")()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), message, descriptor_pool=protos.pool)
    except FileNotFoundError:
        raise UsageError(f"batching parameters file not found: {path}") from None
    except text_format.ParseError as exc:
        raise UsageError(f"{path} is not a valid BatchingParameters text file: {exc}") from None
    defaults = BatchingParameters()
    params = BatchingParameters(
        max_batch_size=message.max_batch_size.value if message.HasField("max_batch_size") else defaults.max_batch_size,
        batch_timeout_micros=(message.batch_timeout_micros.value if message.HasField("batch_timeout_micros")
                              else defaults.batch_timeout_micros),
        max_enqueued_batches=(message.max_enqueued_batches.value if message.HasField("max_enqueued_batches")
                              else defaults.max_enqueued_batches),
        num_batch_threads=(message.num_batch_threads.value if message.HasField("num_batch_threads")
                           else defaults.num_batch_threads),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
    )
    params.check(str(path))
    return params


Outcome = tuple[dict[str, np.ndarray], float]
"""A request's outputs and the seconds it waited in the queue."""


@dataclass(eq=False)
class _Task:
    feed: Feed
    rows: int
    key: tuple
    enqueued: float
    deadline: float | None
    loop: asyncio.AbstractEventLoop | None = None
    """The event loop awaiting the request, or None for a thread blocked in `infer`."""
    future: Any = None
    """The caller's future: an asyncio one (created on `loop`) or a `concurrent.futures.Future` for a thread."""
    abandoned: bool = False
    """The caller stopped waiting (deadline passed): compute nothing for it."""
    timings: list[BatchRun] | None = None
    """Where the batch thread puts the request's `BatchRun` (traced requests only)."""

    def __post_init__(self) -> None:
        self.future = self.loop.create_future() if self.loop is not None else Future()


@dataclass(frozen=True, slots=True)
class BatchRun:
    """When one batch ran (`time.time_ns()`), for the traces of the requests in it."""

    picked_ns: int
    """The batch was taken from the queue (its requests stopped waiting)."""
    run_ns: int
    """The runtime was called."""
    done_ns: int
    """The runtime returned."""
    rows: int
    requests: int


Delivery = tuple[_Task, "Outcome | None", "ServeError | None"]
"""A request and its outcome, or the error it gets."""


def _settle(deliveries: list[Delivery]) -> None:
    """Hand outcomes to their callers' futures (on the callers' loop, for asyncio ones); a caller that has gone (its
    wait timed out or was cancelled) is skipped."""
    for task, outcome, error in deliveries:
        if task.future.done():
            continue
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(outcome)


def deliver(deliveries: list[Delivery]) -> None:
    """Resolve requests from a batch thread: threads' futures at once, and each event loop's requests in **one**
    callback on that loop. One wake-up per batch instead of one per request: each wake-up hands the GIL between the
    batch thread and the loop, which cost more than the batch's compute on a busy 2-core machine."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
    for delivery in deliveries:
        loop = delivery[0].loop
        if loop is None:
            _settle([delivery])
        else:
            by_loop.setdefault(loop, []).append(delivery)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for these any more
            loop.call_soon_threadsafe(_settle, items)


def _wait_seconds(deadline: float | None) -> float | None:
    """How long a caller waits: until its deadline, capped at a day (a far-off deadline must not overflow the
    platform's timeout)."""
    return None if deadline is None else min(max(0.0, deadline - time.monotonic()), 86_400.0)


def _shape_key(feed: Feed) -> tuple:
    return tuple((name, value.dtype.str, value.shape[1:]) for name, value in sorted(feed.items()))


def _runs_alone(feed: Feed, max_batch_size: int) -> bool:
    """A request that is a batch on its own: `max_batch_size` rows or more, or a tensor without rows to merge (a
    scalar, or no input at all, as a SavedModel fed as TF Serving feeds it may take)."""
    return not feed or any(np.ndim(v) == 0 for v in feed.values()) or batch_size(feed) >= max_batch_size


class Batcher:
    """Merges concurrent requests for one model version into batches run by `num_batch_threads` threads."""

    def __init__(self, backend: Backend, params: BatchingParameters, *, model: str, version: int,
                 metrics: ServerMetrics | None = None, stats: VersionStatistics | None = None) -> None:
        self._backend = backend
        self._params = params
        self._model, self._version = model, version
        self._metrics = metrics
        self._stats = stats
        self._capacity = params.max_batch_size * params.max_enqueued_batches
        self._cond = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._executing = 0
        """Batches being run right now."""
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{model}-{version}-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue."""
        return self._queued_rows

    def infer(self, feed: Feed, deadline: float | None = None) -> Outcome:
        """Run `feed` as part of a batch; blocks until its rows are computed.

        Returns:
            The outputs for the feed's rows, and the seconds the request waited in the queue.

        Args:
            feed: a validated feed.
            deadline: `time.monotonic()` time after which the caller no longer wants the answer.

        Raises:
            ServeError: UNAVAILABLE when the queue is full or the batcher closed; DEADLINE_EXCEEDED when the
                deadline passed first; INTERNAL when the runtime failed.
        """
        if _runs_alone(feed, self._params.max_batch_size):
            return self._run_alone(feed), 0.0  # a batch on its own: never queued, never dropped
        task = self._enqueue(feed, deadline, None)
        try:
            return task.future.result(_wait_seconds(deadline))
        except FutureTimeoutError:
            task.abandoned = True
            raise ServeError(ErrorKind.DEADLINE, f"deadline exceeded while queued for model {self._model!r}") from None

    async def infer_async(self, feed: Feed, deadline: float | None = None,
                          timings: list[BatchRun] | None = None) -> Outcome:
        """`infer` for an event loop: the loop goes on serving other calls while the batch forms and runs.

        Args:
            feed: a validated feed.
            deadline: `time.monotonic()` time after which the caller no longer wants the answer.
            timings: when given, gets the `BatchRun` of the batch the request ran in (for its trace).
        """
        if _runs_alone(feed, self._params.max_batch_size):
            picked = time.time_ns()
            outputs = await asyncio.get_running_loop().run_in_executor(None, self._run_alone, feed)
            if timings is not None:
                timings.append(BatchRun(picked, picked, time.time_ns(), batch_size(feed), 1))
            return outputs, 0.0
        task = self._enqueue(feed, deadline, asyncio.get_running_loop())
        task.timings = timings
        timeout = _wait_seconds(deadline)
        try:
            return await (task.future if timeout is None else asyncio.wait_for(task.future, timeout))
        except TimeoutError:
            task.abandoned = True
            raise ServeError(ErrorKind.DEADLINE, f"deadline exceeded while queued for model {self._model!r}") from None

    def _enqueue(self, feed: Feed, deadline: float | None, loop: asyncio.AbstractEventLoop | None) -> _Task:
        """Queue a request, or refuse it at once (queue full, batcher closed)."""
        rows = batch_size(feed)
        task = _Task(feed, rows, _shape_key(feed), time.monotonic(), deadline, loop)
        with self._cond:
            if self._closed:
                raise ServeError(ErrorKind.UNAVAILABLE, f"model {self._model!r} version {self._version} is unloading")
            if self._queued_rows + rows > self._capacity:
                raise ServeError(ErrorKind.UNAVAILABLE,
                                 f"queue full for model {self._model!r} ({self._queued_rows} rows waiting, "
                                 f"limit {self._capacity}); retry later")
            self._queue.append(task)
            self._queued_rows += rows
            self._gauge(+1)
            # Wake a batch thread only when it has something new to decide: the queue was empty (it waits for
            # work) or a full batch is waiting (it may stop waiting for the timeout). Otherwise the thread forming
            # the batch wakes at its timeout anyway; a wake-up per request would hand the GIL back and forth.
            if len(self._queue) == 1 or self._queued_rows >= self._params.max_batch_size:
                self._cond.notify()
        return task

    def _gauge(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.queue_changed(self._model, delta)

    def _run_alone(self, feed: Feed) -> dict[str, np.ndarray]:
        try:
            return self._execute(feed, batch_size(feed))
        except Exception:
            logger.exception("runtime failed on model %s version %d", self._model, self._version)
            raise ServeError(ErrorKind.INTERNAL,
                             f"model {self._model!r} version {self._version} failed to run the request") from None

    def _execute(self, feed: Feed, rows: int) -> dict[str, np.ndarray]:
        started = time.perf_counter_ns()
        outputs = self._backend.infer(feed)
        elapsed = time.perf_counter_ns() - started
        if self._stats is not None:
            self._stats.record_execution(rows, elapsed)
        if self._metrics is not None:
            self._metrics.execution(self._model, self._version, elapsed / 1e9, rows)
        return outputs

    def _next_batch(self) -> list[_Task] | None:
        """Wait for work, then take the oldest request and those that fit with it (same shapes, row budget)."""
        timeout = self._params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None  # closed and drained
                first = self._queue[0]
                fill_by = first.enqueued + timeout
                rows = sum(t.rows for t in self._queue if t.key == first.key)
                # Waiting only pays while another batch runs: requests pile up behind it. With the runtime idle,
                # the next arrival may be a reply away (a closed loop), so a lone request goes at once.
                if (rows >= self._params.max_batch_size or time.monotonic() >= fill_by or self._closed
                        or self._executing == 0):
                    break
                self._cond.wait(fill_by - time.monotonic())
            batch: list[_Task] = []
            kept: deque[_Task] = deque()
            expired: list[Delivery] = []
            total, now = 0, time.monotonic()
            for task in self._queue:
                if task.abandoned or (task.deadline is not None and task.deadline <= now):
                    expired.append((task, None, ServeError(ErrorKind.DEADLINE, "deadline exceeded while queued")))
                elif task.key == first.key and total + task.rows <= self._params.max_batch_size:
                    batch.append(task)
                    total += task.rows
                else:
                    kept.append(task)
                    continue
                self._queued_rows -= task.rows
                self._gauge(-1)
            self._queue = kept
            if batch:
                self._executing += 1
        deliver(expired)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._executing -= 1
                        self._cond.notify_all()  # a waiting thread may now dispatch what piled up

    def _run_batch(self, batch: list[_Task]) -> None:
        picked_ns = time.time_ns()
        now = time.monotonic()
        queued = [now - task.enqueued for task in batch]
        if self._metrics is not None:
            self._metrics.queued(self._model, queued)
        rows = sum(t.rows for t in batch)
        padded = self._params.padded_size(rows)
        names = list(batch[0].feed)
        merged = {}
        for name in names:
            parts = [t.feed[name] for t in batch]
            if padded > rows:  # repeat the last row: real values, so no runtime sees odd zeros or NaN
                parts.append(np.repeat(parts[-1][-1:], padded - rows, axis=0))
            merged[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        run_ns = time.time_ns()
        try:
            outputs = self._execute(merged, rows)
        except Exception:
            logger.exception("runtime failed on a batch of %d rows for model %s version %d",
                             rows, self._model, self._version)
            error = ServeError(ErrorKind.INTERNAL,
                               f"model {self._model!r} version {self._version} failed to run the request")
            deliver([(task, None, error) for task in batch])
            return
        run = BatchRun(picked_ns, run_ns, time.time_ns(), rows, len(batch))
        deliveries: list[Delivery] = []
        offset = 0
        for task, seconds in zip(batch, queued):
            if task.timings is not None:
                task.timings.append(run)
            deliveries.append(
                (task, ({name: value[offset:offset + task.rows] for name, value in outputs.items()}, seconds), None))
            offset += task.rows
        deliver(deliveries)

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

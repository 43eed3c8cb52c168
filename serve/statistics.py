"""Triton's ModelStatistics counters for one model version: per request and per runtime execution.

A request counts once (success or fail, its queue, input, infer and output time, its rows); a runtime execution
counts once however many requests it served (a merged batch runs once): `execution_count` and the per-batch-size
statistics are about executions, as in Triton, so the batch sizes the batcher forms can be read back. Each version
holds its own counters behind its own lock: an update is a few additions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class StatisticsSnapshot:
    """A copy of one version's counters, as Triton's ModelStatistics reports them."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    """Waiting in the batching queue (zero without batching); perf_analyzer finds the version by this count."""
    compute_input: Duration = field(default_factory=Duration)
    """Validation of the decoded request."""
    compute_infer: Duration = field(default_factory=Duration)
    """The runtime (with batching: the merged batch, after the queue)."""
    compute_output: Duration = field(default_factory=Duration)
    """Selecting the asked-for outputs."""
    inference_count: int = 0
    """Rows inferred (the sum of the requests' batch sizes)."""
    execution_count: int = 0
    """Runtime executions (a merged batch is one)."""
    last_inference_ms: int = 0
    batch_sizes: dict[int, Duration] = field(default_factory=dict)
    """Executions by the rows they ran (before padding), with their runtime time."""


class VersionStatistics:
    """The live counters of one version; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = StatisticsSnapshot()

    def record_request(self, *, ok_ns: int, input_ns: int, queue_ns: int, compute_ns: int, output_ns: int,
                       rows: int) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock:  # written out: five method calls per request were a third of this function's cost
            data = self._data
            data.success.count += 1
            data.success.ns += ok_ns
            data.queue.count += 1
            data.queue.ns += queue_ns
            data.compute_input.count += 1
            data.compute_input.ns += input_ns
            data.compute_infer.count += 1
            data.compute_infer.ns += compute_ns
            data.compute_output.count += 1
            data.compute_output.ns += output_ns
            data.inference_count += rows
            data.last_inference_ms = now_ms

    def record_failure(self, ns: int) -> None:
        with self._lock:
            self._data.fail.add(ns)

    def record_execution(self, rows: int, ns: int) -> None:
        with self._lock:
            self._data.execution_count += 1
            sizes = self._data.batch_sizes
            if rows not in sizes:
                sizes[rows] = Duration()
            sizes[rows].add(ns)

    def snapshot(self) -> StatisticsSnapshot:
        with self._lock:
            data = self._data
            return StatisticsSnapshot(
                success=Duration(data.success.count, data.success.ns), fail=Duration(data.fail.count, data.fail.ns),
                queue=Duration(data.queue.count, data.queue.ns),
                compute_input=Duration(data.compute_input.count, data.compute_input.ns),
                compute_infer=Duration(data.compute_infer.count, data.compute_infer.ns),
                compute_output=Duration(data.compute_output.count, data.compute_output.ns),
                inference_count=data.inference_count, execution_count=data.execution_count,
                last_inference_ms=data.last_inference_ms,
                batch_sizes={k: Duration(d.count, d.ns) for k, d in data.batch_sizes.items()},
            )

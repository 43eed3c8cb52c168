"""A bounded queue that a request hands records to and one writer thread drains: logs off the request path.

`offer` never blocks: when the writer cannot keep up (a slow disk, a collector that does not answer), the queue
fills and further records are dropped and counted (`kdeploy_log_records_dropped_total{log,reason="queue_full"}`)
instead of making inference wait. Records the sink fails to write are counted with `reason="sink_error"`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from kdeploy.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 256
"""Records the writer takes from the queue at once (one write and one flush for all of them)."""
WARN_EVERY_SECONDS = 60.0


class RecordQueue(Generic[T]):
    """Records of one log on their way to its sink."""

    def __init__(self, log: str, write: Callable[[list[T]], None], capacity: int, metrics: ServerMetrics | None,
                 close_sink: Callable[[], None] | None = None) -> None:
        """
        Args:
            log: the log's name in metrics and messages (`payload`, `access`).
            write: writes a batch of records (on the writer thread); an exception loses that batch, counted.
            capacity: records the queue holds before it drops.
            metrics: where drops are counted.
            close_sink: called on the writer thread once the queue is drained at `close()`.
        """
        self.log = log
        self._write = write
        self._close_sink = close_sink
        self._metrics = metrics
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=capacity)
        self._warned_at = -WARN_EVERY_SECONDS
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"{log}-log", daemon=True)
        self._thread.start()

    def offer(self, record: T) -> bool:
        """Queue a record unless the queue is full (then it is dropped and counted); never blocks."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.log_dropped(self.log, "queue_full")
            return False
        return True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            if records:
                self._deliver(records)
            if None in batch:  # close() asked: everything before it is written
                if self._close_sink is not None:
                    self._close_sink()
                return

    def _deliver(self, records: list[T]) -> None:
        try:
            self._write(records)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.log_dropped(self.log, "sink_error", len(records))
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_SECONDS:  # a sink that is down must not flood the log
                self._warned_at = now
                logger.warning("%s log: %d record(s) lost, the sink failed: %s", self.log, len(records), exc)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the sink and stop the thread (waits at most `timeout`)."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    logger.warning("%s log: %d record(s) still queued at shutdown", self.log, self._queue.qsize())
                    return
        self._thread.join(max(0.0, deadline - time.monotonic()))

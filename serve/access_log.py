"""The access log: one JSON line per request, written by a thread of its own (`--access-log FILE|-`).

Fields: `time` (arrival, UTC), `peer`, `protocol`, `operation` (the RPC or `METHOD /route`), `model`, `version`,
`status` (gRPC status name, or HTTP status code), `latency_ms` (arrival to answer ready), `request_bytes`,
`response_bytes` (serialized messages for gRPC; body lengths for HTTP) and `trace_id` ("" without a trace).
The request path only queues a tuple; formatting and writing happen on the writer thread, and a full queue
drops lines and counts them (`kdeploy_log_records_dropped_total{log="access"}`) rather than slowing requests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.observe import RequestScope
from kdeploy.serve.record_queue import RecordQueue
from kdeploy.wire.payload_log import time_text

STDOUT = "-"

_Line = tuple[int, str, str, str, str, str, str, float, int, int, str]


class AccessLog:
    """Access lines to a file (appended) or to standard output (`-`)."""

    def __init__(self, target: str, capacity: int, metrics: ServerMetrics | None) -> None:
        """
        Args:
            target: a file path, or `-` for standard output.
            capacity: lines queued before new ones are dropped.
            metrics: where drops are counted.
        """
        self._stream: TextIO
        if target == STDOUT:
            self._stream, self._owned = sys.stdout, False
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream, self._owned = open(path, "a", encoding="utf-8"), True  # noqa: SIM115 - server lifetime
        self.queue: RecordQueue[_Line] = RecordQueue("access", self._write, capacity, metrics, self._close_stream)

    def write(self, scope: RequestScope, *, model: str, version: str, status: str, latency_s: float,
              request_bytes: int, response_bytes: int) -> None:
        """Queue one request's line (called when its answer is ready)."""
        self.queue.offer((scope.started_ns, scope.peer, scope.protocol, scope.operation, model, version, status,
                          latency_s, request_bytes, response_bytes, scope.trace_id))

    def _write(self, lines: list[_Line]) -> None:
        text = "".join(_format(line) for line in lines)
        self._stream.write(text)
        self._stream.flush()

    def _close_stream(self) -> None:
        if self._owned:
            self._stream.close()

    def close(self) -> None:
        self.queue.close()


def _format(line: _Line) -> str:
    started_ns, peer, protocol, operation, model, version, status, latency, sent, answered, trace_id = line
    return json.dumps({
        "time": time_text(started_ns), "peer": peer, "protocol": protocol, "operation": operation, "model": model,
        "version": version, "status": int(status) if status.isdigit() else status,
        "latency_ms": round(latency * 1000, 3), "request_bytes": sent, "response_bytes": answered,
        "trace_id": trace_id,
    }, separators=(",", ":")) + "\n"

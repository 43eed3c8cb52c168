"""Sampled payload logging: a share of the requests, with their answers, written as CloudEvents off the request path.

The inference service `offer`s each answered request; `rate` decides (one random draw) whether it is kept, and a
kept one is queued as references to its arrays (nothing is encoded on the request path). The writer thread turns
each into a request and a response event (`kdeploy.wire.payload_log`) and hands them to the sinks: a JSON lines
file that rotates by size, and/or an HTTP endpoint that receives them as KServe's logger sends them (binary-mode
CloudEvents). A full queue drops and counts; see `record_queue.py`.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.observe import RequestScope
from kdeploy.serve.record_queue import RecordQueue
from kdeploy.wire.payload_log import EventContext, binary_http, event_line, request_event, response_event

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Sample:
    """A kept request, as references: encoded later, on the writer thread."""

    scope: RequestScope
    model: str
    version: int
    signature: str
    feed: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    answered_ns: int


class RotatingFile:
    """Appends text to a file; past `max_bytes` the file becomes FILE.1 (FILE.1 becomes FILE.2 ...), keeping
    `backups` old files, as logging's RotatingFileHandler names them. Whole lines per write: a reader never sees a
    record cut by rotation."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self._max = max_bytes
        self._backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the server's lifetime
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if self._max and self._size and self._size + size > self._max:
            self._rotate()
        self._file.write(text)
        self._file.flush()
        self._size += size

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.close()


class CloudEventsPoster:
    """POSTs events to one URL in CloudEvents' binary mode over a kept-alive connection."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--payload-log-url {url!r}: expected http://HOST[:PORT]/PATH or https://...")
        self._parsed = parsed
        self._path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._parsed.hostname or "", self._parsed.port, timeout=self._timeout)
        return self._connection

    def post(self, event: Mapping[str, object]) -> None:
        """Send one event.

        Raises:
            OSError: when the endpoint cannot be reached or answers with an error status.
        """
        headers, body = binary_http(event)
        connection = self._connect()
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._connection = None
            raise OSError(f"{self._parsed.geturl()}: {exc}") from None
        if response.status >= 300:
            raise OSError(f"{self._parsed.geturl()} answered {response.status} {response.reason}")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


class PayloadLog:
    """Samples answered requests and writes them to the configured sinks."""

    def __init__(self, rate: float, *, file: RotatingFile | None, poster: CloudEventsPoster | None,
                 capacity: int, metrics: ServerMetrics | None, source: str = "", namespace: str = "",
                 seed: int | None = None) -> None:
        """
        Args:
            rate: share of requests kept, 0 to 1.
            file: the JSON lines sink, if any.
            poster: the HTTP sink, if any.
            capacity: requests queued before new ones are dropped.
            metrics: where drops are counted.
            source: the events' `source` (default: kdeploy/HOSTNAME).
            namespace: the events' `namespace` extension (the pod's, in Kubernetes).
            seed: seeds the sampling draws (tests).
        """
        if not 0.0 < rate <= 1.0:
            raise UsageError(f"--payload-log-rate must be in (0, 1], got {rate}")
        if file is None and poster is None:
            raise UsageError("--payload-log-rate needs a sink: --payload-log-file PATH and/or --payload-log-url URL")
        self._rate = rate
        self._random = random.Random(seed).random
        self._file = file
        self._poster = poster
        self._source = source or f"kdeploy/{socket.gethostname()}"
        self._namespace = namespace
        self.queue: RecordQueue[_Sample] = RecordQueue("payload", self._write, capacity, metrics, self._close_sinks)

    def offer(self, scope: RequestScope, model: str, version: int, signature: str, feed: Mapping[str, np.ndarray],
              outputs: Mapping[str, np.ndarray]) -> None:
        """Keep this answered request with probability `rate` (called on the request path: no encoding here)."""
        if self._rate < 1.0 and self._random() >= self._rate:
            return
        self.queue.offer(_Sample(scope, model, version, signature, feed, outputs, time.time_ns()))

    def _write(self, samples: list[_Sample]) -> None:
        events = []
        for sample in samples:
            scope = sample.scope
            context = EventContext(id=str(uuid.uuid4()), source=self._source, model=sample.model,
                                   version=sample.version, protocol=scope.protocol, signature=sample.signature,
                                   trace_id=scope.trace_id, span_id=scope.span_id, namespace=self._namespace)
            events.append(request_event(context, sample.feed, scope.started_ns))
            events.append(response_event(context, sample.outputs, sample.answered_ns))
        problems = []
        if self._file is not None:
            try:
                self._file.write("".join(event_line(e) for e in events))
            except OSError as exc:
                problems.append(f"{self._file.path}: {exc}")
        if self._poster is not None:
            try:
                for event in events:
                    self._poster.post(event)
            except OSError as exc:
                problems.append(str(exc))
        if problems:
            raise OSError("; ".join(problems))

    def _close_sinks(self) -> None:
        for sink in (self._file, self._poster):
            if sink is not None:
                sink.close()

    def close(self) -> None:
        self.queue.close()

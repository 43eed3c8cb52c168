"""Every request's latency at full precision, recorded from Locust's `request` event and written to a file.

Locust keeps response times rounded (to whole milliseconds below 100 ms, two significant digits above), which
is coarse for a model that answers in 1-3 ms. The recorder listens to the same event Locust's statistics do, so
it sees exactly the same requests, and keeps the float milliseconds. In distributed mode workers ship their
records to the master inside Locust's regular worker reports. This module never imports Locust.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.files import atomic_path

logger = logging.getLogger(__name__)

REPORT_KEY = "kdeploy_latencies"
"""Key of the records in the data a worker reports to its master."""
_ADDRESS = re.compile(r"(object at 0x)[0-9a-fA-F]+")


class RequestError(Exception):
    """A failed request, named the way it is grouped: `INVALID_ARGUMENT: input 'image': ...`, `HTTP 400: ...`.

    Its `repr` is its message, because Locust groups failures by `repr(exception)`: the failures CSV and
    `summary.json` then show the same error text.
    """

    def __repr__(self) -> str:
        return str(self)


def error_key(exception: BaseException | str) -> str:
    """The text a failure is grouped under: `repr` as Locust does, without memory addresses."""
    text = exception if isinstance(exception, str) else repr(exception)
    return _ADDRESS.sub(r"\g<1>....", text)


@dataclass(frozen=True)
class Records:
    """The requests of one run, in completion order."""

    start: np.ndarray
    """Wall-clock seconds when each request was (meant to be) sent: the intended time in open loop."""
    latency_ms: np.ndarray
    error: np.ndarray
    """Index into `errors`, or -1 for a success."""
    errors: tuple[str, ...]
    test_start: float
    """Wall-clock seconds when the test started."""

    @property
    def end(self) -> np.ndarray:
        return self.start + self.latency_ms / 1000.0

    def __len__(self) -> int:
        return int(self.latency_ms.size)


class LatencyRecorder:
    """Collects (start, latency, error) per request; one per Locust process."""

    def __init__(self) -> None:
        self.clear()

    def clear(self, test_start: float | None = None) -> None:
        self.test_start = time.time() if test_start is None else test_start
        self._start: list[float] = []
        self._latency: list[float] = []
        self._error: list[int] = []
        self._errors: dict[str, int] = {}
        self._shipped = 0

    def on_request(self, response_time: float | None, exception: BaseException | None = None,
                   start_time: float | None = None, **_: Any) -> None:
        """Listener for Locust's `request` event."""
        if response_time is None:  # Locust counts these apart and leaves them out of its statistics too
            return
        self._latency.append(float(response_time))
        self._start.append(float(start_time) if start_time is not None else time.time() - response_time / 1000.0)
        self._error.append(-1 if exception is None else self._error_index(error_key(exception)))

    def _error_index(self, key: str) -> int:
        return self._errors.setdefault(key, len(self._errors))

    def take_chunk(self) -> dict[str, list[Any]]:
        """The records not yet shipped, for a worker's report to the master."""
        names = {index: key for key, index in self._errors.items()}
        chunk: dict[str, list[Any]] = {"start": self._start[self._shipped:], "ms": self._latency[self._shipped:],
                 "error": [None if e < 0 else names[e] for e in self._error[self._shipped:]]}
        self._shipped = len(self._latency)
        return chunk

    def add_chunk(self, chunk: dict[str, list[Any]]) -> None:
        """Records a worker shipped (on the master)."""
        self._start.extend(chunk["start"])
        self._latency.extend(chunk["ms"])
        self._error.extend(-1 if e is None else self._error_index(e) for e in chunk["error"])

    def records(self) -> Records:
        return Records(start=np.asarray(self._start, dtype=np.float64),
                       latency_ms=np.asarray(self._latency, dtype=np.float64),
                       error=np.asarray(self._error, dtype=np.int32),
                       errors=tuple(sorted(self._errors, key=self._errors.__getitem__)),
                       test_start=self.test_start)

    def save(self, path: Path) -> None:
        """Write the records to an `.npz` file atomically."""
        save_records(path, self.records())
        logger.info("%d request latencies written to %s", len(self._latency), path)


def save_records(path: Path, records: Records) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, start=records.start, latency_ms=records.latency_ms, error=records.error,
                 errors=np.asarray(records.errors, dtype=str), test_start=np.float64(records.test_start))


def load_records(path: Path) -> Records:
    """Read a file written by `save_records`."""
    with np.load(path, allow_pickle=False) as data:
        return Records(start=data["start"], latency_ms=data["latency_ms"], error=data["error"],
                       errors=tuple(str(e) for e in data["errors"]), test_start=float(data["test_start"]))

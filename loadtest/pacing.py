"""Open-loop pacing: send times at a constant rate, shared by all users of one Locust process.

A closed-loop user sends its next request when the previous one returns, so a slow server quietly lowers the
load and the slow periods are under-sampled ("coordinated omission"). In open loop the send times are fixed in
advance, `start + k / rate`; each free user takes the next one, and a request's latency is measured from that
intended time. When every user is busy the queue of due sends grows, and that waiting is part of the latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class OpenLoopSchedule:
    """Hands out intended send times (`time.perf_counter` seconds) at `rate` per second, in order."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._clock = clock
        self._start: float | None = None
        self._issued = 0

    @property
    def started(self) -> bool:
        return self._start is not None

    def start(self) -> float:
        """Begin the schedule now (once every user is ready), unless it has begun; returns when it began."""
        if self._start is None:
            self._start = self._clock()
        return self._start

    def claim(self) -> float:
        """The next intended send time; a schedule not yet started starts at its first claim.

        Users are greenlets and this method never yields, so no two users can take the same slot.
        """
        slot = self.start() + self._issued / self.rate
        self._issued += 1
        return slot

    @property
    def issued(self) -> int:
        return self._issued

    def lag(self) -> float:
        """Seconds the schedule is behind: how overdue the next send is (0 when on time)."""
        if self._start is None:
            return 0.0
        return max(0.0, self._clock() - (self._start + self._issued / self.rate))

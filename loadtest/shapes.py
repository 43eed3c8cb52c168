"""Load shapes as plans: how many users at which second, and when the run ends (standard library only).

`constant` holds `--users` for the duration; `step` adds `--step-users` at equal intervals up to `--users`, so
each step measures one load level (the report finds the highest throughput at which the SLO still held);
`ramp` adds one user at a time, evenly over the duration. The locustfile's `LoadTestShape` only asks the plan
`tick(elapsed)`; the report asks it for the stages to cut the results by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdeploy.common.errors import UsageError


@dataclass(frozen=True)
class Stage:
    """One load level: `users` from `start_s` to `end_s` after the start."""

    start_s: float
    end_s: float
    users: int


@dataclass(frozen=True)
class ShapePlan:
    """Stages back to back from 0 s; the run ends after the last."""

    name: str
    stages: tuple[Stage, ...]
    spawn_rate: float

    @property
    def duration_s(self) -> float:
        return self.stages[-1].end_s

    def stage_at(self, elapsed_s: float) -> Stage | None:
        for stage in self.stages:
            if stage.start_s <= elapsed_s < stage.end_s:
                return stage
        return None

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """Locust's `LoadTestShape.tick`: (users, spawn rate), or `None` to stop."""
        stage = self.stage_at(elapsed_s)
        return None if stage is None else (stage.users, self.spawn_rate)


def plan_for(shape: str, users: int, spawn_rate: float, duration_s: float, step_users: int | None = None) -> ShapePlan:
    """The plan for a shape name.

    Args:
        shape: `constant`, `step` or `ramp`.
        users: users at the end (the most users).
        spawn_rate: users started per second when the level changes.
        duration_s: the whole run.
        step_users: users added per step (`step` only; default a fifth of `users`).

    Raises:
        UsageError: for an unknown shape or a step too short to measure.
    """
    if shape == "constant":
        return ShapePlan(shape, (Stage(0.0, duration_s, users),), spawn_rate)
    if shape == "step":
        step = step_users or max(1, math.ceil(users / 5))
        levels = [*range(step, users, step), users]
    elif shape == "ramp":
        levels = list(range(1, users + 1))
    else:
        raise UsageError(f"unknown shape {shape!r}; use constant, step or ramp")
    length = duration_s / len(levels)
    if shape == "step" and length < 1.0:
        raise UsageError(f"{len(levels)} steps in {duration_s:g} s leave {length:.2f} s per step; "
                         "give a longer --duration or a larger --step-users")
    stages = tuple(Stage(k * length, (k + 1) * length, n) for k, n in enumerate(levels))
    return ShapePlan(shape, stages, spawn_rate)

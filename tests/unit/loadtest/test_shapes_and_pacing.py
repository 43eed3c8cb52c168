import pytest

from kdeploy.common.errors import UsageError
from kdeploy.loadtest.pacing import OpenLoopSchedule
from kdeploy.loadtest.shapes import Stage, plan_for


def test_constant_holds_the_users_then_stops():
    plan = plan_for("constant", 10, 5.0, 30.0)
    assert plan.tick(0.0) == (10, 5.0) and plan.tick(29.9) == (10, 5.0) and plan.tick(30.0) is None


def test_step_adds_step_users_at_equal_intervals_up_to_users():
    plan = plan_for("step", 10, 100.0, 12.0, step_users=4)
    assert plan.stages == (Stage(0.0, 4.0, 4), Stage(4.0, 8.0, 8), Stage(8.0, 12.0, 10))
    assert [plan.tick(t)[0] for t in (0.5, 4.5, 11.9)] == [4, 8, 10] and plan.tick(12.0) is None
    assert [s.users for s in plan_for("step", 10, 1.0, 50.0).stages] == [2, 4, 6, 8, 10]


def test_step_refuses_steps_too_short_to_measure():
    with pytest.raises(UsageError, match="per step"):
        plan_for("step", 100, 10.0, 5.0, step_users=1)


def test_ramp_adds_one_user_at_a_time_over_the_duration():
    plan = plan_for("ramp", 4, 10.0, 8.0)
    assert [plan.tick(t)[0] for t in (0.0, 2.0, 4.1, 7.9)] == [1, 2, 3, 4] and plan.duration_s == 8.0


def test_unknown_shape():
    with pytest.raises(UsageError):
        plan_for("sine", 1, 1.0, 1.0)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_hands_out_evenly_spaced_send_times_from_the_first_claim():
    clock = Clock()
    schedule = OpenLoopSchedule(4.0, clock)
    assert schedule.lag() == 0.0
    assert [schedule.claim() for _ in range(3)] == [100.0, 100.25, 100.5]
    assert schedule.issued == 3


def test_schedule_keeps_its_pace_when_users_fall_behind():
    """Late claims get the slots they missed (so their latency counts the wait), not fresh ones."""
    clock = Clock()
    schedule = OpenLoopSchedule(10.0, clock)
    schedule.claim()
    clock.now += 1.0  # every user was busy for a second
    assert schedule.lag() == pytest.approx(0.9)
    assert schedule.claim() == pytest.approx(100.1)


def test_schedule_refuses_a_non_positive_rate():
    with pytest.raises(ValueError):
        OpenLoopSchedule(0.0)


def test_schedule_started_explicitly_counts_from_then():
    clock = Clock()
    schedule = OpenLoopSchedule(2.0, clock)
    assert not schedule.started
    schedule.start()
    clock.now += 3.0
    schedule.start()  # a second start changes nothing
    assert schedule.started and schedule.claim() == 100.0 and schedule.lag() == pytest.approx(2.5)

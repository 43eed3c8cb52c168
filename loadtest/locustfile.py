"""kdeploy's locustfile: load a model server over TF Serving gRPC, KServe v2 gRPC or TF Serving REST.

    locust -f loadtest/locustfile.py --host 127.0.0.1:8500 --model digits --repository models/ \\
        [--protocol kserve-grpc] [--batch 8] [--rate 500/s] [--shape step] [--latency-file lat.npz]

Works headless, with the web UI, and distributed (`--master` / `--worker`, `--processes N`): every option is also
a `KDEPLOY_LOADTEST_*` env var, and a master forwards them to its workers. The user class follows `--protocol`
unless user classes are named on the command line. `kdeploy loadtest` runs this file in a subprocess.
"""

from __future__ import annotations

import csv
import gc
import logging
import time
from pathlib import Path
from typing import Any

import gevent
import grpc.experimental.gevent
from locust import LoadTestShape, events
from locust.env import Environment
from locust.runners import MasterRunner, Runner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from kdeploy.common.errors import KdeployError
from kdeploy.common.files import atomic_path
from kdeploy.loadtest.config import WorkloadSettings, add_locust_arguments
from kdeploy.loadtest.pacing import OpenLoopSchedule
from kdeploy.loadtest.payloads import build_payloads
from kdeploy.loadtest.recorder import REPORT_KEY, LatencyRecorder
from kdeploy.loadtest.shapes import ShapePlan, plan_for
from kdeploy.loadtest.users import (
    KServeGrpcUser,
    KServeRestUser,
    TfServingGrpcUser,
    TfServingRestUser,
    Workload,
    find_workload,
    host_address,
    set_workload,
)

__all__ = ["KServeGrpcUser", "KServeRestUser", "KdeployShape", "TfServingGrpcUser", "TfServingRestUser"]

logger = logging.getLogger("kdeploy.loadtest.locustfile")

DRAIN_S = 0.25
"""Users send nothing new in the run's last quarter second, so no request is in flight when Locust stops.

Locust's `Runner.stop` blocks the event loop for tens of milliseconds (it calls `inspect.stack()` for a debug
message); a request in flight then would have that added to its latency.
"""

USERS = {u.protocol: u for u in (TfServingGrpcUser, KServeGrpcUser, TfServingRestUser, KServeRestUser)}


class KdeployShape(LoadTestShape):
    """`--shape step|ramp`, read from the common options (`--users`, `--spawn-rate`, `--run-time`).

    With `--shape constant` the locustfile removes this shape and Locust runs its usual fixed user count.
    """

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.plan: ShapePlan | None = None

    def tick(self) -> tuple[int, float] | None:
        if self.plan is None:
            assert self.runner is not None  # Locust sets it before the first tick
            self.plan = _plan_from_options(self.runner.environment.parsed_options)
        return self.plan.tick(self.get_run_time())


def _plan_from_options(options: Any) -> ShapePlan:
    if not options.run_time:
        raise RuntimeError("--shape step and ramp need --run-time: the plan divides it into stages")
    users = int(options.num_users or 1)
    return plan_for(options.shape, users, float(options.spawn_rate or users), float(options.run_time),
                    int(options.step_users) if options.step_users else None)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_locust_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, runner: Runner, **_: Any) -> None:
    # gRPC must cooperate with gevent before its first channel; Locust has patched the standard library already.
    grpc.experimental.gevent.init_gevent()
    # gevent's loop caches "now" from before Locust imported this file; --run-time's timer, started right after
    # this event, would otherwise end the run early by the import time.
    gevent.get_hub().loop.update_now()
    options = environment.parsed_options
    if options is None:  # a test harness building its own Environment wires itself up
        return
    if not isinstance(runner, WorkerRunner):
        _choose_user_class(environment, options)
        if options.shape == "constant" or not options.shape:
            environment.shape_class = None
    recorder = LatencyRecorder()
    _wire_recorder(environment, runner, recorder, options)
    if options.csv_prefix and not isinstance(runner, WorkerRunner):
        environment.events.quitting.add_listener(lambda **_: _write_final_csv(environment, options.csv_prefix))
    environment.events.test_start.add_listener(lambda **_: _on_test_start(environment, recorder))


def _choose_user_class(environment: Environment, options: Any) -> None:
    """Keep only `--protocol`'s user class, unless user classes were named on the command line."""
    if options.user_classes:
        return
    chosen = USERS[options.protocol]
    environment.user_classes[:] = [chosen]


def _wire_recorder(environment: Environment, runner: Runner, recorder: LatencyRecorder, options: Any) -> None:
    """Record requests where they happen; workers ship their records to the master, which writes the file."""

    def on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
        if REPORT_KEY in data:
            recorder.add_chunk(data[REPORT_KEY])

    def on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[REPORT_KEY] = recorder.take_chunk()

    def on_spawning_complete(user_count: int, **_: Any) -> None:
        if environment.reset_stats:  # --reset-stats: Locust forgets the ramp-up, so does the recorder
            recorder.clear()
        workload = find_workload(environment)
        if workload is not None:
            workload.spawned = True  # open loop may start once these users have connected

    events_ = environment.events
    if isinstance(runner, MasterRunner):
        events_.worker_report.add_listener(on_worker_report)
    else:
        events_.request.add_listener(recorder.on_request)
    if isinstance(runner, WorkerRunner):
        events_.report_to_master.add_listener(on_report_to_master)
    elif options.latency_file:
        events_.quitting.add_listener(lambda **_: recorder.save(options.latency_file))
    events_.reset_stats.add_listener(lambda **_: recorder.clear())  # the web UI's reset button
    events_.spawning_complete.add_listener(on_spawning_complete)


def _write_final_csv(environment: Environment, prefix: str) -> None:
    """Rewrite Locust's statistics CSVs with the final numbers, using Locust's own writer.

    Locust refreshes them once a second and not at exit, so they would miss up to the last second of requests.
    """
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv),
                          ("_exceptions.csv", writer.exceptions_csv)):
        with atomic_path(Path(prefix + suffix)) as tmp, open(tmp, "w", newline="") as handle:
            write(csv.writer(handle))


def _on_test_start(environment: Environment, recorder: LatencyRecorder) -> None:
    now = time.time()
    recorder.clear(test_start=now)
    runner = environment.runner
    options = environment.parsed_options
    assert runner is not None and options is not None  # both exist once a test starts
    if not isinstance(runner, WorkerRunner):
        gevent.spawn(_stop_after_max_requests, runner, int(options.max_requests))
        # Custom options travel to workers with the spawn message that follows this event.
        options.kdeploy_stop_sending_at = now + options.run_time - DRAIN_S if options.run_time else None
        _choose_user_class(environment, options)  # the web UI may have changed --protocol
    if isinstance(runner, MasterRunner):
        options.kdeploy_rate_share = 1.0 / max(1, runner.worker_count)  # each worker paces its share
        return
    try:
        settings = WorkloadSettings.from_options(options)
        payloads = build_payloads(settings, host_address(environment.host), settings.request_timeout_s)
    except (KdeployError, OSError, RuntimeError, ValueError) as exc:
        logger.error("kdeploy loadtest: cannot build the requests: %s", exc)
        environment.process_exit_code = 2
        set_workload(environment, None)
        gevent.spawn(runner.quit)
        return
    schedule = None
    if settings.rate is not None:
        schedule = OpenLoopSchedule(settings.rate * float(getattr(options, "kdeploy_rate_share", 1.0)))
    set_workload(environment, Workload(settings, payloads, schedule,
                                       stop_sending_at=getattr(options, "kdeploy_stop_sending_at", None)))
    # A full garbage collection walks every object of Locust, gRPC and NumPy and stops all users for tens of
    # milliseconds, which would show as latency; frozen objects are not walked again.
    gc.collect()
    gc.freeze()


def _stop_after_max_requests(runner: Runner, max_requests: int) -> None:
    """Stop once `max_requests` have been made: a run is bounded in requests as well as in time."""
    gevent.sleep(0.1)  # the runner enters its spawning state just after test_start
    while runner.state not in ("stopped", "stopping"):
        if runner.stats.total.num_requests >= max_requests:
            logger.info("kdeploy loadtest: %d requests reached (--max-requests), stopping", max_requests)
            # Headless runs end; with the web UI the test stops and the UI stays.
            options = runner.environment.parsed_options
            if options is None or options.headless:
                runner.quit()
            else:
                runner.stop()
            return
        gevent.sleep(0.1)

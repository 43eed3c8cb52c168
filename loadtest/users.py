"""Locust users for TF Serving gRPC `Predict`, KServe v2 gRPC `ModelInfer`, TF Serving REST `:predict` and KServe v2
REST `/infer` (binary tensors).

Every call fires Locust's `request` event (request type, name, float milliseconds, response length, exception),
so Locust's statistics, CSV and HTML reports, web UI and distributed mode work as for HTTP. The gRPC users
are gevent-friendly: the locustfile calls `grpc.experimental.gevent.init_gevent()` before any channel exists,
and each user owns one channel on its own connection. Request bodies are serialized once per process
(`kdeploy.loadtest.payloads`); responses are not decoded, so the generator's CPU goes to sending.

Importing this module imports Locust, which monkey-patches the process with gevent: only a locustfile should.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from locust import FastHttpUser, User, task
from locust.env import Environment
from locust.exception import StopUser

from kdeploy.loadtest.config import PREFLIGHT_TIMEOUT_S, WorkloadSettings
from kdeploy.loadtest.metadata import GRPC_CHANNEL_OPTIONS
from kdeploy.loadtest.pacing import OpenLoopSchedule
from kdeploy.loadtest.payloads import Payloads
from kdeploy.loadtest.recorder import RequestError
from kdeploy.wire.kserve_rest import INFERENCE_HEADER
from kdeploy.wire.protocols import REST_PROTOCOLS
from kdeploy.wire.tls import secure_channel

logger = logging.getLogger(__name__)

IDLE_S = 3600.0
"""A user's wait once the run is about to end; Locust stops waiting users at once."""
STARTUP_POLL_S = 0.01
"""How often an open-loop user checks whether the schedule has started (when every user is running)."""


@dataclass
class Workload:
    """What the users of one Locust process share: the request bodies and, in open loop, the send schedule."""

    settings: WorkloadSettings
    payloads: Payloads
    schedule: OpenLoopSchedule | None = None
    stop_sending_at: float | None = None
    """Wall-clock time after which users only wait: the run is about to end."""
    spawned: bool = False
    """Every user of this process has been started (Locust's `spawning_complete`)."""
    ready_users: int = 0
    """Users that have connected and are ready to send."""
    _users: Iterator[int] = field(default_factory=itertools.count)

    def next_user_index(self) -> int:
        return next(self._users)

    def ready_to_pace(self, user_count: int) -> bool:
        """Start the open-loop schedule once every user is connected, so the first sends are not late."""
        schedule = self.schedule
        if schedule is not None and not schedule.started and self.spawned and self.ready_users >= user_count:
            schedule.start()
        return schedule is None or schedule.started


_WORKLOADS: weakref.WeakKeyDictionary[Environment, Workload | None] = weakref.WeakKeyDictionary()


def set_workload(environment: Environment, workload: Workload | None) -> None:
    """Hand a workload to the users of `environment` (done by the locustfile when a test starts).

    `None` says the requests could not be built (the locustfile has logged why): users then stop at once.
    """
    _WORKLOADS[environment] = workload


def find_workload(environment: Environment) -> Workload | None:
    """The environment's workload, if one was built."""
    return _WORKLOADS.get(environment)


def workload_of(environment: Environment) -> Workload:
    """The environment's workload.

    Raises:
        StopUser: when the locustfile could not build one.
        RuntimeError: when the users were loaded without the locustfile's wiring.
    """
    try:
        workload = _WORKLOADS[environment]
    except KeyError:
        raise RuntimeError("no workload for this Locust environment: "
                           "load these users through loadtest/locustfile.py") from None
    if workload is None:
        raise StopUser()
    return workload


class PacedUser:
    """Closed loop (back to back) or open loop (the next intended send time from the shared schedule).

    In open loop the user takes a send time in `wait_time`, where Locust may stop it at once, and the task
    measures the latency from that time, so any wait for a free user counts (no coordinated omission).
    """

    environment: Environment
    protocol: ClassVar[str] = ""

    def _begin(self) -> None:
        self.workload = workload_of(self.environment)
        sent = self.workload.payloads.protocol
        if (sent in REST_PROTOCOLS or self.protocol in REST_PROTOCOLS) and sent != self.protocol:
            # Only possible when the web UI switches --protocol to or from REST after Locust started (each HTTP
            # protocol has its own body and headers; the gRPC users send either gRPC protocol's serialized bytes).
            raise RuntimeError(f"{type(self).__name__} cannot send {self.workload.payloads.protocol} requests; "
                               "restart Locust with that --protocol")
        bodies = self.workload.payloads.bodies
        offset = self.workload.next_user_index() % len(bodies)
        # Users start at different bodies, so the server does not see all of them send the same batch at once.
        self._bodies = itertools.cycle(bodies[offset:] + bodies[:offset])
        self._offset = offset
        self._slot: float | None = None

    def wait_time(self) -> float:
        stop_at = self.workload.stop_sending_at
        if stop_at is not None and time.time() >= stop_at:
            return IDLE_S
        schedule = self.workload.schedule
        if schedule is None:
            return 0.0
        runner = self.environment.runner
        if runner is None or not self.workload.ready_to_pace(runner.user_count):
            return STARTUP_POLL_S
        if self._slot is None:
            self._slot = schedule.claim()
        return max(0.0, self._slot - time.perf_counter())

    def _send_time(self) -> float | None:
        """The intended send time (`perf_counter`), or `None` on an open-loop user's first turn (no slot yet)."""
        if self.workload.schedule is None:
            return time.perf_counter()
        slot, self._slot = self._slot, None
        return slot


def host_address(host: str | None) -> str:
    """Locust's `--host` as `HOST:PORT` (a gRPC target), with any `grpc://` or `http://` prefix removed."""
    if not host:
        raise RuntimeError("no --host given: pass the server's HOST:PORT")
    return host.split("://", 1)[-1].rstrip("/")


class GrpcUser(PacedUser, User):
    """Sends the workload's serialized requests to one gRPC method, bytes in and bytes out."""

    abstract = True

    def on_start(self) -> None:
        self._begin()
        self._connect()
        self.workload.ready_users += 1

    def _connect(self) -> None:
        # A local subchannel pool gives every user its own connection, as separate clients would have.
        options = (*GRPC_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))
        self._channel = secure_channel(host_address(self.host), self.workload.settings.tls, options=options)
        self._call = self._channel.unary_unary(self.workload.payloads.path)
        self._timeout = self.workload.settings.request_timeout_s
        # Connect, and send one request that is not counted, before measuring: the TCP/HTTP2 handshake and the
        # server's set-up of a new connection (about 4 ms each for kdeploy's Python server, queued behind each
        # other when 50 users connect at once) are not the latency of a request in a steady load.
        # A server that is not there fails the first counted request instead.
        try:
            grpc.channel_ready_future(self._channel).result(timeout=min(self._timeout, PREFLIGHT_TIMEOUT_S))
            self._call(self.workload.payloads.bodies[0], timeout=self._timeout)
        except (grpc.FutureTimeoutError, grpc.RpcError):
            pass

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def infer(self) -> None:
        intended = self._send_time()
        if intended is None:
            return
        exception: Exception | None = None
        length = 0
        try:
            length = len(self._call(next(self._bodies), timeout=self._timeout))
        except grpc.RpcError as exc:
            exception = RequestError(f"{exc.code().name}: {exc.details()}")
        elapsed = time.perf_counter() - intended
        self.environment.events.request.fire(
            request_type="grpc", name=self.workload.payloads.name, response_time=elapsed * 1000.0,
            response_length=length, exception=exception, context={}, start_time=time.time() - elapsed,
        )


class TfServingGrpcUser(GrpcUser):
    """TF Serving `PredictionService/Predict` (TF Serving itself, or kdeploy's server)."""

    protocol = "tfserving-grpc"


class KServeGrpcUser(GrpcUser):
    """KServe v2 `GRPCInferenceService/ModelInfer` (Triton, KServe runtimes, or kdeploy's server)."""

    protocol = "kserve-grpc"


class RestUser(PacedUser, FastHttpUser):
    """An HTTP inference `POST` through Locust's FastHttpUser, one connection per user."""

    abstract = True
    concurrency = 1
    max_retries = 0

    def __init__(self, environment: Environment) -> None:
        # FastHttpUser builds its HTTP client here, so the timeout must be set before; with no workload (it could
        # not be built) the user stops in on_start.
        workload = find_workload(environment)
        if workload is not None:
            self.network_timeout = self.connection_timeout = workload.settings.request_timeout_s
            tls = workload.settings.tls
            if tls is not None:
                # Verify the server (Locust's default is not to), with gevent's SSLContext (patched into `ssl`).
                self.insecure = False
                context = tls.ssl_context()
                self.ssl_context_factory = lambda *args, **kwargs: context
        super().__init__(environment)

    def headers(self, index: int) -> dict[str, str]:
        """The headers that go with body `index` of the workload."""
        raise NotImplementedError

    def on_start(self) -> None:
        self._begin()
        payloads = self.workload.payloads
        headers = [self.headers(i) for i in range(len(payloads.bodies))]
        offset = self._offset
        self._headers = itertools.cycle(headers[offset:] + headers[:offset])  # in step with self._bodies
        # As the gRPC users do: connect with one request that is not counted (Locust's session would count it,
        # so it goes through the session's own HTTP client).
        url = f"{self.client.base_url}{payloads.path}"
        try:
            response = self.client.client.urlopen(url, method="POST", payload=payloads.bodies[0], headers=headers[0])
            response.content  # noqa: B018 - read the body, so the connection is free for the next request
        except Exception:
            pass
        self.workload.ready_users += 1

    @task
    def predict(self) -> None:
        intended = self._send_time()
        if intended is None:
            return
        lag = time.perf_counter() - intended
        payloads = self.workload.payloads
        # FastHttpSession sends bytes as they are; its annotation only lists str and dict.
        with self.client.post(payloads.path, data=next(self._bodies), name=payloads.name, catch_response=True,  # type: ignore[arg-type]
                              headers=next(self._headers)) as response:
            if response.status_code != 200:
                response.failure(RequestError(_http_error(response)))
            if self.workload.schedule is not None:  # open loop: count from the intended send time, as gRPC does
                response.request_meta["response_time"] += lag * 1000.0
                response.request_meta["start_time"] -= lag


class TfServingRestUser(RestUser):
    """TF Serving REST `POST /v1/models/NAME:predict` (JSON)."""

    protocol: ClassVar[str] = "tfserving-rest"

    def headers(self, index: int) -> dict[str, str]:
        return {"Content-Type": "application/json"}


class KServeRestUser(RestUser):
    """KServe v2 REST `POST /v2/models/NAME/infer` with binary tensors (Triton, KServe runtimes, kdeploy's server)."""

    protocol: ClassVar[str] = "kserve-rest"

    def headers(self, index: int) -> dict[str, str]:
        length = self.workload.payloads.header_lengths[index]
        if length is None:
            return {"Content-Type": "application/json"}
        return {"Content-Type": "application/octet-stream", INFERENCE_HEADER: str(length)}


def _http_error(response: Any) -> str:
    if not response.status_code:  # no HTTP answer at all: refused, reset, timed out
        error = getattr(response, "error", None)
        return f"connection error: {type(error).__name__}: {error}"
    try:
        message = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        message = (response.text or "")[:200]
    return f"HTTP {response.status_code}: {message}"


USER_CLASSES: dict[str, type[User]] = {
    "tfserving-grpc": TfServingGrpcUser, "kserve-grpc": KServeGrpcUser, "tfserving-rest": TfServingRestUser,
    "kserve-rest": KServeRestUser,
}

"""The gRPC front end on `grpc.aio`: one event loop (in a thread of its own) answers every RPC.

A threaded `grpc.server` hands each call from gRPC's poller to a pool thread and back, under the GIL; on a small
model that hand-off costs more than the model. Here calls are coroutines on one loop: the cheap RPCs (metadata,
status, statistics) and the inference of models whose run is a few microseconds complete inline, heavier models run
on executor threads and batched ones in the batcher (see `InferenceService.infer_async`), so the loop keeps
accepting while onnxruntime runs without the GIL.

Draining, as Kubernetes expects it: `drain()` makes every new RPC answer UNAVAILABLE (clients retry that code, on
another replica) and waits for the RPCs accepted before that point. It does not stop gRPC's server: its shutdown
cancels the calls it has received but not yet handed to the application, and those clients would see CANCELLED,
which they do not retry. A process that exits after the drain (`server.exit_process`, which skips gRPC's shutdown at
interpreter exit too) closes its sockets instead, and a call still on the wire then fails UNAVAILABLE ("Socket
closed"). `close()` stops the server for callers that go on running.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Container, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kdeploy.serve.errors import GRPC_STATUS, INTERNAL_MESSAGE
from kdeploy.serve.metrics import UNKNOWN_MODEL, ServerMetrics
from kdeploy.serve.observe import REQUEST, Observers
from kdeploy.wire.errors import ServeError

logger = logging.getLogger(__name__)

T = TypeVar("T")
DRAINING_MESSAGE = "the server is shutting down; retry (another replica takes new requests)"


@dataclass(frozen=True)
class Method:
    """What the error/metrics wrapper needs to know of one RPC."""

    service: str
    name: str
    protocol: str
    """Label for metrics: tfserving-grpc or kserve-grpc."""
    model_of: Callable[[Any], str] | None = None
    """Reads the model name from a request (None for RPCs that are not about one model)."""
    version_of: Callable[[Any], str] | None = None
    """Reads the served version from a response."""


class Gate:
    """Counts the RPCs in progress and, once draining, refuses new ones (used on the loop's thread only)."""

    def __init__(self) -> None:
        self.inflight = 0
        self.refusing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> bool:
        if self.refusing:
            return False
        self.inflight += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True


def _unary(method: Method, call_adapter: Callable[[Any, Any], Any], metrics: ServerMetrics,
           known_models: Container[str], gate: Gate, observers: Observers | None = None
           ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Wrap a servicer method: ServeError → its status; anything else → INTERNAL, logged, server alive.

    Counts inference RPCs in the request metrics, by model (unknown names share one label), version and status.
    With `observers`, the RPC is also traced and access-logged (see `serve/observe.py`).
    """
    is_coroutine = inspect.iscoroutinefunction(call_adapter)
    operation = f"{method.service}/{method.name}"

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not gate.enter():
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        started = time.perf_counter()
        status, response, counted, scope = grpc.StatusCode.OK, None, False, None
        try:
            if observers is not None:  # inside the try: the gate is left whatever happens
                scope = observers.begin(method.protocol, operation, lambda: context.invocation_metadata() or (),
                                        context.peer(), kind_rpc=True)
                token = REQUEST.set(scope)
            try:
                response = await call_adapter(request, context) if is_coroutine else call_adapter(request, context)
                return response  # sent once this coroutine ends: after the `finally` below has counted it
            except ServeError as exc:
                status, message = GRPC_STATUS[exc.kind], exc.message
            except Exception:
                status, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
                logger.exception("%s/%s failed", method.service, method.name)
            # abort() sends the status at once: count it first, so a client that then reads /metrics finds it.
            _count(method, metrics, known_models, request, None, status, started)
            counted = True
            await context.abort(status, message)
        finally:
            gate.leave()
            if not counted:
                _count(method, metrics, known_models, request, response, status, started)
            if scope is not None and observers is not None:
                REQUEST.reset(token)
                _observed(observers, scope, method, request, response, status)

    return call


_SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
"""Statuses that mark a server span as an error (OpenTelemetry's gRPC conventions); a refused input does not."""


def _observed(observers: Observers, scope: Any, method: Method, request: Any, response: Any,
              status: grpc.StatusCode) -> None:
    """End the RPC's span and write its access line."""
    model = method.model_of(request) if method.model_of is not None else ""
    version = method.version_of(response) if response is not None and method.version_of else ""
    observers.end(scope, model=model, version=version, status=status.name, error=status in _SERVER_ERRORS,
                  request_bytes=request.ByteSize,
                  response_bytes=(response.ByteSize if response is not None else lambda: 0))


def _count(method: Method, metrics: ServerMetrics, known_models: Container[str], request: Any, response: Any,
           status: grpc.StatusCode, started: float) -> None:
    """One RPC in the request metrics (inference RPCs only) and, with -v, the access log."""
    if method.model_of is not None:
        model = method.model_of(request)
        model = model if model in known_models else UNKNOWN_MODEL
        version = method.version_of(response) if response is not None and method.version_of else ""
        metrics.request_done(model, version, method.protocol, status.name, time.perf_counter() - started)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s/%s %s %.3f ms", method.service, method.name, status.name,
                     (time.perf_counter() - started) * 1000)


@dataclass(frozen=True)
class Service:
    """One gRPC service: its methods and the adapter object that implements them."""

    name: str
    methods: list[Method]
    adapter: Any


class GrpcFrontEnd:
    """A `grpc.aio` server on an event loop of its own thread, with health, reflection and a draining gate."""

    def __init__(self, services: Iterable[Service], metrics: ServerMetrics, known_models: Container[str], *,
                 options: list[tuple[str, Any]], reflection_names: Iterable[str], reflection_pool: Any,
                 observers: Observers | None = None) -> None:
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self._services = list(services)
        self._metrics = metrics
        self._known = known_models
        self._options = options
        self._reflection = (tuple(reflection_names), reflection_pool)
        self._observers = observers
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health: Any = None
        self._gate: Gate | None = None
        self.port = 0
        self.health_port: int | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run a plain function on the loop (thread-safe)."""
        self._loop.call_soon_threadsafe(callback)

    def start(self, address: str, credentials: grpc.ServerCredentials | None = None,
              health_address: str | None = None, extra_addresses: Iterable[str] = ()) -> int:
        """Bind `address` and start answering (health NOT_SERVING until `set_health`); returns the bound port.

        Args:
            address: HOST:PORT for every service.
            credentials: TLS server credentials for `address` (None: plaintext).
            health_address: HOST:PORT for a plaintext listener that serves grpc.health.v1 alone (for probes that
                cannot speak TLS); its port is then `health_port` (0 when it could not be bound).
            extra_addresses: further addresses for every service, plaintext (`unix:PATH`, TF Serving's
                --grpc_socket_path); the bound port is 0 when one cannot be bound.
        """
        self.port = self.run(self._start(address, credentials, tuple(extra_addresses)))
        if self.port and health_address is not None:
            self.health_port = self.run(self._start_health(health_address))
        return self.port

    async def _start(self, address: str, credentials: grpc.ServerCredentials | None = None,
                     extra_addresses: tuple[str, ...] = ()) -> int:
        self._gate = Gate()
        server = grpc.aio.server(options=self._options)
        for service in self._services:
            handlers = {
                m.name: grpc.unary_unary_rpc_method_handler(
                    _unary(m, getattr(service.adapter, m.name), self._metrics, self._known, self._gate,
                           self._observers),
                    request_deserializer=service.adapter.request_types[m.name].FromString,
                    response_serializer=_serialize,
                )
                for m in service.methods
            }
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.name, handlers),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        names, pool = self._reflection
        reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=pool)
        try:
            port = (server.add_secure_port(address, credentials) if credentials is not None
                    else server.add_insecure_port(address))
            for extra in extra_addresses:
                if not server.add_insecure_port(extra):
                    port = 0
        except RuntimeError:
            port = 0
        if port:
            await server.start()
            self._server = server
        return port

    async def _start_health(self, address: str) -> int:
        # A server of its own: a port added to the main server would carry every service, in plaintext.
        server = grpc.aio.server(options=[o for o in self._options if o[0] == "grpc.so_reuseport"])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)  # the same statuses as the main port
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port:
            await server.start()
            self._health_server = server
        return port

    def set_health(self, statuses: dict[str, bool]) -> None:
        """SERVING or NOT_SERVING per health service name (`""` for the whole server)."""
        async def apply() -> None:
            for name, serving in statuses.items():
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                                       else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.run(apply(), timeout=10)

    def enter_graceful_shutdown(self) -> None:
        """Health NOT_SERVING for every service, at once and for good (RPCs are still answered)."""
        self.run(self._health.enter_graceful_shutdown(), timeout=10)

    def drain(self, timeout: float) -> bool:
        """Refuse new RPCs (UNAVAILABLE) and wait up to `timeout` for those in progress.

        Returns:
            Whether every RPC in progress finished within the time.
        """
        return self.run(self._drain(timeout))

    async def _drain(self, timeout: float) -> bool:
        assert self._gate is not None
        self._gate.refusing = True
        idle = await self._gate.wait_idle(timeout)
        if not idle:
            logger.warning("drain time over with %d RPCs still in progress", self._gate.inflight)
        return idle

    def close(self) -> None:
        """Stop the server (if still running) and the loop; the thread ends."""
        for server in (self._server, self._health_server):
            if server is not None and self._loop.is_running():
                self.run(server.stop(0), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (a faster loop for the same code), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()

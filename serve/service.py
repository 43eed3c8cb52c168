"""The inference service every protocol adapter calls: resolve the version, validate the feed, run, account.

Adapters only translate wire messages into a feed and back; validation, error kinds and statistics live here,
once, for gRPC (TF Serving and KServe v2) and REST alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdeploy.contract.signature import Feed, ModelSignature, SignatureError, batch_size
from kdeploy.runtimes.base import infer_signature
from kdeploy.serve.batching import BatchRun
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager, ServedVersion
from kdeploy.serve.observe import REQUEST, Observers, RequestScope
from kdeploy.serve.statistics import StatisticsSnapshot
from kdeploy.wire.errors import ErrorKind, ServeError, invalid

logger = logging.getLogger(__name__)

NO_DEADLINE_SECONDS = 86_400.0


class InFlight:
    """A version held for one request: `with service.serving(...) as served:` releases it at the end."""

    __slots__ = ("served",)

    def __init__(self, served: ServedVersion) -> None:
        self.served = served

    def __enter__(self) -> ServedVersion:
        return self.served

    def __exit__(self, *exc: object) -> None:
        self.served.release()


@dataclass(slots=True)
class _Call:
    """A validated request on its way through the service."""

    served: ServedVersion
    signature: ModelSignature
    feed: dict[str, np.ndarray]
    wanted: list[str]
    rows: int
    started: int
    """`perf_counter_ns()` when the service got it."""
    validated: int


@dataclass(slots=True)
class InferenceResult:
    served: ServedVersion
    outputs: dict[str, np.ndarray]


class InferenceService:
    """Runs requests against the models of a `ModelManager`."""

    def __init__(self, models: ModelManager, metrics: ServerMetrics | None = None, *,
                 executor: Executor | None = None, observers: Observers | None = None) -> None:
        """
        Args:
            models: the versions to serve.
            metrics: where requests and runtime calls are counted.
            executor: threads that run the models not served inline for `infer_async` (None: every model runs
                inline); each version says which it is (`ServedVersion.inline`, chosen at load).
            observers: tracing and payload logging (None: off, and the request path checks nothing else).
        """
        self.models = models
        self.metrics = metrics
        self.draining = False
        """Set when the server starts draining: readiness (KServe's ServerReady, `/v2/health/ready`) says not
        ready from then on, while requests are still served for the grace period."""
        self._executor = executor
        self._observers = observers

    def serving(self, name: str, version: int | None = None, label: str | None = None) -> InFlight:
        """The version that serves a request, counted in-flight (so it is not unloaded) for the `with` block.

        Raises:
            ServeError: NOT_FOUND or UNAVAILABLE from the model manager.
        """
        return InFlight(self.models.acquire(name, version, label))

    def infer(
        self,
        served: ServedVersion,
        feed: Feed,
        output_names: Sequence[str] = (),
        deadline: float | None = None,
        signature_name: str = "",
    ) -> InferenceResult:
        """Validate `feed` against the version's signature, run it, and keep the asked-for outputs.

        Args:
            served: the version, held with `serving()`.
            feed: inputs by name.
            output_names: outputs to return (default: all).
            deadline: `time.monotonic()` time after which the caller no longer wants the answer.
            signature_name: the signature to run ("" or `serving_default`: the version's default).

        Raises:
            ServeError: INVALID_INPUT for a feed or output name that does not fit; DEADLINE when the deadline
                passed before the request was computed; UNAVAILABLE when the batching queue is full; INTERNAL
                when the backend fails.
        """
        call = self._begin(served, feed, output_names, signature_name)
        try:
            if served.batcher is not None and call.signature is served.signature:
                outputs, queued = served.batcher.infer(call.feed, deadline)
            else:
                self._check_deadline(served, deadline)
                outputs, queued = self._run_direct(served, call.feed, call.signature, call.rows), 0.0
        except BaseException:  # a refusal, a deadline, a runtime error, a cancelled call: all count as failures
            served.stats.record_failure(time.perf_counter_ns() - call.started)
            raise
        return self._finish(call, outputs, queued)

    async def infer_async(
        self,
        served: ServedVersion,
        feed: Feed,
        output_names: Sequence[str] = (),
        deadline: float | None = None,
        signature_name: str = "",
    ) -> InferenceResult:
        """`infer` for the event loop. A version served inline (a tiny model, or one whose run uses every core: see
        `auto_settings`) runs right here; others run on the executor's threads (the runtime releases the GIL) and
        batched ones in the batcher, while the loop serves other calls.

        Raises:
            ServeError: as `infer`.
        """
        call = self._begin(served, feed, output_names, signature_name)
        scope = REQUEST.get() if self._observers is not None else None
        timings: list[BatchRun] | None = None
        if scope is not None:
            timings, computing_ns = ([] if scope.span is not None else None), time.time_ns()
        try:
            if served.batcher is not None and call.signature is served.signature:
                outputs, queued = await served.batcher.infer_async(call.feed, deadline, timings)
            else:
                self._check_deadline(served, deadline)
                if self._executor is None or served.inline:
                    outputs = self._run_direct(served, call.feed, call.signature, call.rows)
                else:
                    loop = asyncio.get_running_loop()
                    outputs = await loop.run_in_executor(self._executor, self._run_direct, served, call.feed,
                                                         call.signature, call.rows)
                queued = 0.0
        except BaseException:  # a refusal, a deadline, a runtime error, a cancelled call: all count as failures
            served.stats.record_failure(time.perf_counter_ns() - call.started)
            raise
        result = self._finish(call, outputs, queued)
        if scope is not None:
            self._observe(scope, call, result, computing_ns, timings)
        return result

    def _observe(self, scope: RequestScope, call: _Call, result: InferenceResult, computing_ns: int,
                 timings: list[BatchRun] | None) -> None:
        """The request's child spans (from the times measured on the way) and its payload log records."""
        observers = self._observers
        assert observers is not None
        served = call.served
        scope.model, scope.version = served.name, str(served.version)
        tracing = observers.tracing
        if tracing is not None and scope.span is not None:
            done_ns = time.time_ns()
            if timings:  # batched: waited in the queue, then ran with others
                run = timings[0]
                tracing.child(scope.span, "kdeploy.queue", computing_ns, run.picked_ns)
                batch = tracing.child(scope.span, "kdeploy.batch", run.picked_ns, run.done_ns,
                                      {"kdeploy.batch.rows": run.rows, "kdeploy.batch.requests": run.requests})
                tracing.child(batch, "kdeploy.run", run.run_ns, run.done_ns)
            else:
                tracing.child(scope.span, "kdeploy.run", computing_ns, done_ns, {"kdeploy.rows": call.rows})
            if scope.span.is_recording():
                scope.span.set_attributes({"kdeploy.model": served.name, "kdeploy.model_version": served.version,
                                           "kdeploy.signature": call.signature.name, "kdeploy.rows": call.rows})
        if observers.payload_log is not None:
            observers.payload_log.offer(scope, served.name, served.version, call.signature.name, call.feed,
                                        result.outputs)

    def _begin(self, served: ServedVersion, feed: Feed, output_names: Sequence[str], signature_name: str) -> _Call:
        """Validate the feed and the asked-for outputs (counted as a failure when they do not fit)."""
        started = time.perf_counter_ns()
        signature = served.signature
        try:
            try:
                if signature_name and signature_name != signature.name:
                    signature = served.loaded()[0].signature_named(signature_name)
                if not feed and signature.inputs:
                    raise invalid(f"the request has no inputs; model {served.name!r} expects {signature.input_names}")
                # A version fed as TF Serving feeds it takes any shape, and the runtime decides (see feeds_as_given).
                checked = signature.validate_feed(feed, check_shapes=served.check_shapes)
                wanted = [signature.output(n).name for n in output_names] or signature.output_names
                if len(set(wanted)) != len(wanted):
                    duplicate = next(n for n in wanted if wanted.count(n) > 1)
                    raise invalid(f"duplicate output tensor alias: {duplicate}")
            except SignatureError as exc:
                raise invalid(str(exc)) from None
            rows = batch_size(checked)
            if served.max_batch_size and rows > served.max_batch_size:
                raise invalid(f"model {served.name!r} takes at most {served.max_batch_size} rows per request "
                              f"(max_batch_size in its config.pbtxt), got {rows}")
        except ServeError:
            served.stats.record_failure(time.perf_counter_ns() - started)
            raise
        return _Call(served, signature, checked, wanted, rows, started, time.perf_counter_ns())

    @staticmethod
    def _check_deadline(served: ServedVersion, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise ServeError(ErrorKind.DEADLINE, f"deadline exceeded before model {served.name!r} ran")

    def _finish(self, call: _Call, outputs: dict[str, np.ndarray], queued: float) -> InferenceResult:
        """Keep the asked-for outputs and account the request."""
        computed = time.perf_counter_ns()
        queue_ns = int(queued * 1e9)
        result = InferenceResult(call.served, {name: outputs[name] for name in call.wanted})
        finished = time.perf_counter_ns()
        call.served.stats.record_request(ok_ns=finished - call.started, input_ns=call.validated - call.started,
                                         queue_ns=queue_ns, compute_ns=computed - call.validated - queue_ns,
                                         output_ns=finished - computed, rows=call.rows)
        return result

    def _run_direct(self, served: ServedVersion, feed: Feed, signature: ModelSignature, rows: int
                    ) -> dict[str, np.ndarray]:
        started = time.perf_counter_ns()
        try:
            backend = served.loaded()[1]
            outputs = infer_signature(backend, signature, feed)
        except SignatureError as exc:  # the runtime refused the values themselves (a tf.Example it cannot parse)
            raise invalid(f"model {served.name!r}: {exc}") from None
        except Exception:
            logger.exception("backend failed on model %s version %d", served.name, served.version,
                             extra={"model": served.name, "version": served.version})
            raise ServeError(ErrorKind.INTERNAL,
                             f"model {served.name!r} version {served.version} failed to run the request") from None
        elapsed = time.perf_counter_ns() - started
        served.stats.record_execution(rows, elapsed)
        if self.metrics is not None:
            self.metrics.execution(served.name, served.version, elapsed / 1e9, rows)
        return outputs

    def statistics(self, name: str, version: int) -> StatisticsSnapshot:
        """A copy of one version's counters.

        Raises:
            ServeError: NOT_FOUND for an unknown model or version.
        """
        return self.models.statuses(name, version)[0].stats.snapshot()


def deadline_of(context: Any) -> float | None:
    """A gRPC call's deadline as a `time.monotonic()` time (None when the client set none).

    gRPC reports "no deadline" as an enormous remaining time (perf_analyzer sends such calls); treat anything
    beyond a day as none, so no wait is asked to last longer than the platform's clock can count.
    """
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None or remaining > NO_DEADLINE_SECONDS else time.monotonic() + remaining

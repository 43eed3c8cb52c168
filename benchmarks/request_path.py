"""Where one KServe v2 ModelInfer spends its time inside kdeploy's server, stage by stage, without gRPC.

Runs the server's own pieces in this process on one model version (the ModelManager, InferenceService and
KServeV2Adapter that `kdeploy serve` builds), and times each stage of the request path separately over many
requests: parse the request bytes, resolve and hold the version, decode the tensors, validate, run the runtime,
account (statistics and metrics), encode the response, serialize it. Also the whole adapter call.

Run: `python benchmarks/request_path.py REPO NAME [--intra-op-threads N]`; prints a Markdown table (µs per request,
best of 15 rounds). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.contract.signature import dtype_by_name
from kdeploy.serve.adapters.kserve_v2 import KServeV2Adapter
from kdeploy.serve.config import ServeConfig, VersionPolicy
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.serve.server import backend_loader
from kdeploy.serve.service import InferenceService
from kdeploy.serve.sources import sources_from_repository
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import kserve_datatype, ndarray_from_kserve, raw_bytes

ROUNDS, REQUESTS = 15, 1000


class NoDeadline:
    def time_remaining(self) -> None:
        return None


def per_request_us(function: Callable[[], Any]) -> float:
    """The best round's mean time of `function`, in µs: as `timeit` advises, the least disturbed round is the
    closest to the code's own cost on a shared machine."""
    for _ in range(200):
        function()
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            function()
        rounds.append((time.perf_counter() - started) / REQUESTS * 1e6)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("repository", type=Path)
    parser.add_argument("name")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args()
    config = ServeConfig(models=tuple(sources_from_repository(args.repository, [args.name], VersionPolicy())),
                         intra_op_threads=args.intra_op_threads)
    protos = load_protos()
    metrics = ServerMetrics()
    models = ModelManager(list(config.models), "onnx", backend_loader(config), metrics=metrics)
    models.load_all()
    service = InferenceService(models, metrics)
    adapter = KServeV2Adapter(service, protos, "onnx")
    served = models.resolve(args.name)
    signature = served.signature
    feed = signature.generate_feed(1, np.random.default_rng(0))
    request = protos.cls("inference.ModelInferRequest")(model_name=args.name)
    for name, value in feed.items():
        request.inputs.add(name=name, datatype=dtype_by_name(value.dtype.name).kserve, shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    data = request.SerializeToString()
    parse = protos.cls("inference.ModelInferRequest").FromString
    spec = {s.name: s for s in signature.inputs}
    backend = served.loaded()[1]
    outputs = backend.infer(feed)
    response_class = protos.cls("inference.ModelInferResponse")
    loop = asyncio.new_event_loop()

    def hold() -> None:
        with service.serving(args.name):
            pass

    def decode() -> None:
        for index, tensor in enumerate(request.inputs):
            ndarray_from_kserve(tensor.name, tensor.datatype, list(tensor.shape), tensor.contents,
                                request.raw_input_contents[index], spec[tensor.name])

    def account() -> None:
        served.stats.record_request(ok_ns=1, input_ns=1, queue_ns=0, compute_ns=1, output_ns=1, rows=1)
        served.stats.record_execution(1, 1)
        metrics.execution(args.name, served.version, 1e-5, 1)

    def encode() -> None:
        response = response_class(model_name=args.name, model_version="1", id="")
        for name, array in outputs.items():
            response.outputs.add(name=name, datatype=kserve_datatype(array), shape=list(array.shape))
            response.raw_output_contents.append(raw_bytes(array))
        response.SerializeToString()

    def whole() -> None:
        loop.run_until_complete(adapter.ModelInfer(parse(data), NoDeadline())).SerializeToString()

    async def nothing() -> None:
        return None

    session_run = backend._session.run  # noqa: SLF001 (the floor: onnxruntime with nothing of kdeploy around it)
    dtypes = {s.name: s.np_dtype for s in signature.inputs}
    output_names = signature.output_names

    async def plain_handler() -> Any:
        message = parse(data)
        given = {t.name: np.frombuffer(raw, dtypes[t.name]).reshape(t.shape)
                 for t, raw in zip(message.inputs, message.raw_input_contents)}
        response = response_class(model_name=args.name, model_version="1")
        for name, value in zip(output_names, session_run(output_names, given)):
            response.outputs.add(name=name, datatype=kserve_datatype(value), shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response.SerializeToString()

    def service_only() -> None:
        with service.serving(args.name) as version:
            loop.run_until_complete(service.infer_async(version, feed))

    stages = {
        "parse request bytes": lambda: parse(data),
        "resolve + hold the version": hold,
        "decode tensors": decode,
        "validate against the signature": lambda: signature.validate_feed(feed),
        "runtime (onnxruntime run)": lambda: backend.infer(feed),
        "statistics + metrics": account,
        "encode + serialize response": encode,
        "InferenceService.infer_async (validate, run, account)": service_only,
        "whole request (adapter, in-process)": whole,
        "the same done by hand: decode, onnxruntime, encode (the `plain` server's handler)":
            lambda: loop.run_until_complete(plain_handler()),
        "(the event loop's own cost of running one coroutine here)": lambda: loop.run_until_complete(nothing()),
    }
    print(f"| stage ({args.name}) | µs per request |\n|---|---|")
    for label, function in stages.items():
        print(f"| {label} | {per_request_us(function):.1f} |")


if __name__ == "__main__":
    main()

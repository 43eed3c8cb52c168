"""Two reference servers for the serving benchmark, speaking KServe v2 gRPC well enough for perf_analyzer.

- `null`: answers every ModelInfer with a cached response and runs no model: the ceiling of one Python gRPC
  process on this machine.
- `plain`: runs onnxruntime inline on the raw input, no validation, batching, metrics or logging: what a minimal
  hand-written Python server achieves.

Run: `python benchmarks/reference_servers.py null|plain VERSION_DIR PORT`. Not part of the product.
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from kdeploy.contract.manifest import read_manifest
from kdeploy.contract.signature import dtype_by_name
from kdeploy.serve.triton_config import triton_model_config
from kdeploy.wire.protos.messages import load_protos


def main(kind: str, version_dir: Path, port: int) -> None:
    protos = load_protos()
    manifest = read_manifest(version_dir)
    signature = manifest.signature
    cls = {n: protos.cls(f"inference.{n}") for n in (
        "ModelInferRequest", "ModelInferResponse", "ModelMetadataRequest", "ModelMetadataResponse",
        "ModelConfigRequest", "ModelConfigResponse", "ModelStatisticsRequest", "ModelStatisticsResponse",
        "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
        "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse")}
    lock = threading.Lock()
    count = [0]

    session = None
    if kind == "plain":
        import onnxruntime as ort

        session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    cached = cls["ModelInferResponse"](model_name=manifest.name, model_version="1")
    for spec in signature.outputs:
        shape = [1] + [d or 1 for d in spec.shape[1:]]
        cached.outputs.add(name=spec.name, datatype=dtype_by_name(spec.dtype).kserve, shape=shape)
        cached.raw_output_contents.append(np.zeros(shape, spec.np_dtype).tobytes())
    input_dtypes = {s.name: s.np_dtype for s in signature.inputs}
    output_names = signature.output_names

    def infer(request, context):
        with lock:
            count[0] += 1
        if session is None:
            return cached
        feed = {t.name: np.frombuffer(raw, input_dtypes[t.name]).reshape(t.shape)
                for t, raw in zip(request.inputs, request.raw_input_contents)}
        outputs = session.run(output_names, feed)
        response = cls["ModelInferResponse"](model_name=manifest.name, model_version="1")
        for name, value in zip(output_names, outputs):
            response.outputs.add(name=name, datatype=dtype_by_name(value.dtype.name).kserve, shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    def metadata(request, context):
        response = cls["ModelMetadataResponse"](name=manifest.name, versions=["1"], platform="onnxruntime_onnx")
        for specs, target in ((signature.inputs, response.inputs), (signature.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=dtype_by_name(spec.dtype).kserve,
                           shape=[-1 if d is None else d for d in spec.shape])
        return response

    def config(request, context):
        return cls["ModelConfigResponse"](config=triton_model_config(protos, manifest, dynamic_batching=False))

    def statistics(request, context):
        response = cls["ModelStatisticsResponse"]()
        with lock:
            n = count[0]
        entry = response.model_stats.add(name=manifest.name, version="1", inference_count=n, execution_count=n)
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            getattr(entry.inference_stats, key).count = n
        return response

    handlers = {
        "ModelInfer": (infer, "ModelInferRequest"),
        "ModelMetadata": (metadata, "ModelMetadataRequest"),
        "ModelConfig": (config, "ModelConfigRequest"),
        "ModelStatistics": (statistics, "ModelStatisticsRequest"),
        "ServerLive": (lambda r, c: cls["ServerLiveResponse"](live=True), "ServerLiveRequest"),
        "ServerReady": (lambda r, c: cls["ServerReadyResponse"](ready=True), "ServerReadyRequest"),
        "ModelReady": (lambda r, c: cls["ModelReadyResponse"](ready=True), "ModelReadyRequest"),
        "ServerMetadata": (lambda r, c: cls["ServerMetadataResponse"](name=kind, version="0"), "ServerMetadataRequest"),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=cls[req].FromString,
                                                  response_serializer=lambda m: m.SerializeToString())
        for name, (fn, req) in handlers.items()
    }),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"{kind} server ready on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))

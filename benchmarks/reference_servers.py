"""Reference servers for the serving benchmark, on `grpc.aio`, speaking KServe v2 and TF Serving's Predict well
enough for perf_analyzer.

- `null`: answers every ModelInfer and Predict with a cached response and runs no model: the ceiling of one Python
  gRPC process on this machine (an asyncio server: a threaded `grpc.server` understates that ceiling).
- `plain`: decodes the raw (KServe) or typed/tensor_content (TF Serving) input and runs onnxruntime inline on the
  event loop, with no validation, batching, metrics or logging: what a minimal hand-written Python server achieves.
  Its session is set up as kdeploy's default (idle threads sleep, onnxruntime's thread count); the environment
  variables PLAIN_SPIN=1 and PLAIN_INTRA_OP_THREADS=N change that.

Run: `python benchmarks/reference_servers.py null|plain VERSION_DIR PORT`. Not part of the product.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kdeploy.contract.manifest import read_manifest
from kdeploy.contract.signature import dtype_by_name
from kdeploy.serve.triton_config import triton_model_config
from kdeploy.wire.protos.messages import load_protos

KSERVE = ["ModelInfer", "ModelMetadata", "ModelConfig", "ModelStatistics", "ServerLive", "ServerReady", "ModelReady",
          "ServerMetadata"]


def handlers(kind: str, version_dir: Path) -> dict[str, dict[str, tuple[Any, Any]]]:
    """{service: {method: (function, request class)}} for both protocols."""
    protos = load_protos()
    manifest = read_manifest(version_dir)
    signature = manifest.signature
    req = {n: protos.cls(f"inference.{n}Request") for n in KSERVE}
    res = {n: protos.cls(f"inference.{n}Response") for n in KSERVE}
    predict_request = protos.cls("tensorflow.serving.PredictRequest")
    predict_response = protos.cls("tensorflow.serving.PredictResponse")
    count = [0]
    session = None
    if kind == "plain":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PLAIN_INTRA_OP_THREADS", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("PLAIN_SPIN", "0"))
        session = ort.InferenceSession(str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    input_dtypes = {s.name: s.np_dtype for s in signature.inputs}
    output_names = signature.output_names

    cached_kserve = res["ModelInfer"](model_name=manifest.name, model_version="1")
    cached_predict = predict_response()
    cached_predict.model_spec.name = manifest.name
    for spec in signature.outputs:
        shape = [1] + [d or 1 for d in spec.shape[1:]]
        zeros = np.zeros(shape, spec.np_dtype)
        cached_kserve.outputs.add(name=spec.name, datatype=dtype_by_name(spec.dtype).kserve, shape=shape)
        cached_kserve.raw_output_contents.append(zeros.tobytes())
        tensor = cached_predict.outputs[spec.name]
        tensor.dtype = dtype_by_name(spec.dtype).tf_enum
        for size in shape:
            tensor.tensor_shape.dim.add().size = size
        tensor.tensor_content = zeros.tobytes()

    def model_infer(request: Any, context: Any) -> Any:
        count[0] += 1
        if session is None:
            return cached_kserve
        feed = {t.name: np.frombuffer(raw, input_dtypes[t.name]).reshape(t.shape)
                for t, raw in zip(request.inputs, request.raw_input_contents)}
        response = res["ModelInfer"](model_name=manifest.name, model_version="1")
        for name, value in zip(output_names, session.run(output_names, feed)):
            response.outputs.add(name=name, datatype=dtype_by_name(value.dtype.name).kserve, shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    def predict(request: Any, context: Any) -> Any:
        count[0] += 1
        if session is None:
            return cached_predict
        feed = {}
        for name, tensor in request.inputs.items():
            shape = [d.size for d in tensor.tensor_shape.dim]
            if tensor.tensor_content:
                feed[name] = np.frombuffer(tensor.tensor_content, input_dtypes[name]).reshape(shape)
            else:
                feed[name] = np.fromiter(tensor.float_val, input_dtypes[name], len(tensor.float_val)).reshape(shape)
        response = predict_response()
        response.model_spec.name = manifest.name
        for name, value in zip(output_names, session.run(output_names, feed)):
            tensor = response.outputs[name]
            tensor.dtype = dtype_by_name(value.dtype.name).tf_enum
            for size in value.shape:
                tensor.tensor_shape.dim.add().size = size
            tensor.tensor_content = value.tobytes()
        return response

    def metadata(request: Any, context: Any) -> Any:
        response = res["ModelMetadata"](name=manifest.name, versions=["1"], platform="onnxruntime_onnx")
        for specs, target in ((signature.inputs, response.inputs), (signature.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=dtype_by_name(spec.dtype).kserve,
                           shape=[-1 if d is None else d for d in spec.shape])
        return response

    def config(request: Any, context: Any) -> Any:
        return res["ModelConfig"](config=triton_model_config(protos, manifest, dynamic_batching=False))

    def statistics(request: Any, context: Any) -> Any:
        response = res["ModelStatistics"]()
        n = count[0]
        entry = response.model_stats.add(name=manifest.name, version="1", inference_count=n, execution_count=n)
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            getattr(entry.inference_stats, key).count = n
        return response

    kserve = {
        "ModelInfer": model_infer, "ModelMetadata": metadata, "ModelConfig": config, "ModelStatistics": statistics,
        "ServerLive": lambda r, c: res["ServerLive"](live=True),
        "ServerReady": lambda r, c: res["ServerReady"](ready=True),
        "ModelReady": lambda r, c: res["ModelReady"](ready=True),
        "ServerMetadata": lambda r, c: res["ServerMetadata"](name=kind, version="0"),
    }
    metadata_response = protos.cls("tensorflow.serving.GetModelMetadataResponse")()
    metadata_response.model_spec.name = manifest.name
    signature_map = protos.cls("tensorflow.serving.SignatureDefMap")()
    signature_def = signature_map.signature_def["serving_default"]
    for specs, target in ((signature.inputs, signature_def.inputs), (signature.outputs, signature_def.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name, info.dtype = spec.name, dtype_by_name(spec.dtype).tf_enum
            for size in spec.shape:
                info.tensor_shape.dim.add().size = -1 if size is None else size
    metadata_response.metadata["signature_def"].Pack(signature_map)
    return {
        "inference.GRPCInferenceService": {name: (fn, req[name]) for name, fn in kserve.items()},
        "tensorflow.serving.PredictionService": {
            "Predict": (predict, predict_request),
            # perf_analyzer's TF Serving mode asks for the signature before it sends load.
            "GetModelMetadata": (lambda r, c: metadata_response,
                                 protos.cls("tensorflow.serving.GetModelMetadataRequest")),
        },
    }


def as_coroutine(function: Any) -> Any:
    async def call(request: Any, context: Any) -> Any:
        return function(request, context)

    return call


async def serve(kind: str, version_dir: Path, port: int) -> None:
    server = grpc.aio.server()
    for service, methods in handlers(kind, version_dir).items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(as_coroutine(fn), request_deserializer=request.FromString,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, (fn, request) in methods.items()
        }),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"{kind} server ready on {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))

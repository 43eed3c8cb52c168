"""MLServer 1.7 serving one ONNX file (mlserver_runtime.py), for the serving benchmark, with its default settings
(one parallel inference worker process) but for the addresses: every server binds 127.0.0.1.

Run in the MLServer venv (benchmarks/setup_peers.sh), with this folder on PYTHONPATH:
`python mlserver_server.py MODEL_ONNX NAME GRPC_PORT HTTP_PORT METRICS_PORT MODEL_CONFIG_RESPONSE`.
Triton's ModelConfig RPC, which perf_analyzer calls first, is answered beside MLServer's servicer (shim.py).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import onnxruntime as ort
from mlserver import MLServer
from mlserver.grpc import server as grpc_server
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import MetadataTensor
from mlserver_runtime import OnnxRuntimeModel
from shim import model_config_handler

ONNX_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}


def tensors(args: list) -> list[MetadataTensor]:
    return [MetadataTensor(name=a.name, datatype=ONNX_TYPES[a.type],
                           shape=[d if isinstance(d, int) and d >= 0 else -1 for d in a.shape]) for a in args]


def main() -> None:
    path, name, grpc_port, http_port, metrics_port, config_response = sys.argv[1:7]
    original = grpc_server.GRPCServer._create_server  # noqa: SLF001 - the one place its gRPC server is made

    def create_server(self):
        server = original(self)
        server.add_generic_rpc_handlers((model_config_handler(Path(config_response)),))
        return server

    grpc_server.GRPCServer._create_server = create_server  # noqa: SLF001
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # only to describe the model
    settings = Settings(host="127.0.0.1", grpc_port=int(grpc_port), http_port=int(http_port),
                        metrics_port=int(metrics_port), debug=False)
    model = ModelSettings(name=name, implementation=OnnxRuntimeModel, parameters=ModelParameters(uri=path, version="1"),
                          inputs=tensors(session.get_inputs()), outputs=tensors(session.get_outputs()))
    del session

    async def serve() -> None:  # MLServer's inference pool starts tasks: it must be made inside the loop
        await MLServer(settings).start([model])

    asyncio.run(serve())


if __name__ == "__main__":
    main()

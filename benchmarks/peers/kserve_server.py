"""KServe's Python model server (kserve 0.21) serving one ONNX file with onnxruntime, for the serving benchmark.

Run in the KServe venv (benchmarks/setup_peers.sh):
`python kserve_server.py MODEL_ONNX NAME GRPC_PORT HTTP_PORT MODEL_CONFIG_RESPONSE`.

As a user would write it: a `kserve.Model` whose `predict` runs an onnxruntime session made with onnxruntime's default
options (idle threads spin), answered as KServe answers (raw outputs for raw inputs). Two changes for the benchmark
only: both servers bind 127.0.0.1 (KServe 0.21 binds every interface, `[::]` and `0.0.0.0`), and Triton's
ModelConfig RPC, which perf_analyzer calls first, is answered beside KServe's servicer (shim.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import kserve
import onnxruntime as ort
from grpc import aio
from kserve import InferOutput, InferRequest, InferResponse
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc import server as grpc_server
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest import server as rest_server
from shim import model_config_handler

DATATYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64"}
ONNX_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}


def tensor_types(args: list) -> list[dict]:
    """ModelMetadata's tensors (perf_analyzer reads the input shapes from it)."""
    return [{"name": a.name, "datatype": ONNX_TYPES[a.type],
             "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in a.shape]} for a in args]


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return tensor_types(self.session.get_inputs())

    def get_output_types(self) -> list[dict]:
        return tensor_types(self.session.get_outputs())

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.outputs, feed)
        outputs = []
        for name, value in zip(self.outputs, results):
            output = InferOutput(name=name, shape=list(value.shape), datatype=DATATYPES[value.dtype.name])
            output.set_data_from_numpy(value, binary_data=payload.use_binary_outputs)
            outputs.append(output)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id,
                             use_binary_outputs=payload.use_binary_outputs)


def loopback_grpc_server(config_response: Path) -> type:
    """KServe's GRPCServer, bound to 127.0.0.1 and answering ModelConfig."""

    class LoopbackGRPCServer(grpc_server.GRPCServer):
        async def start(self, max_workers):
            from concurrent import futures

            from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor

            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                         ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_generic_rpc_handlers((model_config_handler(config_response),))
            self._server.add_insecure_port(f"127.0.0.1:{self._port}")
            await self._server.start()
            print(f"kserve ready on {self._port}", flush=True)
            await self._server.wait_for_termination()

    return LoopbackGRPCServer


def main() -> None:
    path, name, grpc_port, http_port, config_response = sys.argv[1:6]
    original_config = rest_server.uvicorn.Config

    def loopback_config(*args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        return original_config(*args, **kwargs)

    rest_server.uvicorn.Config = loopback_config
    kserve.model_server.GRPCServer = loopback_grpc_server(Path(config_response))
    model = OnnxModel(name, Path(path))
    model.load()
    kserve.ModelServer(grpc_port=int(grpc_port), http_port=int(http_port), workers=1).start([model])


if __name__ == "__main__":
    main()

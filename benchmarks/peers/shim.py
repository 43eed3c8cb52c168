"""What perf_analyzer needs from a peer server that the peer does not offer, added for the benchmark only.

perf_analyzer asks Triton's `ModelConfig` RPC before it sends load; KServe's and MLServer's gRPC servers do not
implement it. `model_config_handler` answers it with a ModelConfigResponse the benchmark wrote beforehand (bytes: this
file runs in the peer's own venv, without kdeploy). Standard library and grpcio only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc


def model_config_handler(response_file: Path) -> Any:
    """A generic handler answering `inference.GRPCInferenceService/ModelConfig` with the file's bytes."""
    answer = Path(response_file).read_bytes()

    async def model_config(request: bytes, context: Any) -> bytes:
        return answer

    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(model_config, request_deserializer=lambda b: b,
                                                           response_serializer=lambda b: b)})

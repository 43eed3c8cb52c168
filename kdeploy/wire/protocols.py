"""The client protocols kdeploy speaks and serves (standard library only)."""

from __future__ import annotations

PROTOCOLS: tuple[str, ...] = ("tfserving-grpc", "kserve-grpc", "tfserving-rest", "kserve-rest")
"""TF Serving gRPC `Predict`, KServe v2 gRPC `ModelInfer`, TF Serving REST `:predict`, KServe v2 REST `/infer`."""

REST_PROTOCOLS: tuple[str, ...] = ("tfserving-rest", "kserve-rest")
"""The protocols spoken over HTTP, on a server's REST port."""

GRPC_METHODS: dict[str, str] = {
    "tfserving-grpc": "/tensorflow.serving.PredictionService/Predict",
    "kserve-grpc": "/inference.GRPCInferenceService/ModelInfer",
}
"""The inference RPC of each gRPC protocol, as a method path."""

"""Client helpers for tests: the official TF Serving stub, plain HTTP for REST, and the Keras reference."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from kdeploy.contract.manifest import read_manifest
from kdeploy.runtimes.base import load_backend


def keras_outputs(repo: Path, name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    version = repo / name / "1"
    backend = load_backend("keras", version, read_manifest(version).signature)
    try:
        return backend.infer(feed)
    finally:
        backend.close()


def tfs_predict(address: str, name: str, feed: dict[str, np.ndarray], **spec) -> dict[str, np.ndarray]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for key, value in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert response.model_spec.name == name
    assert response.model_spec.signature_name == (spec.get("signature_name") or "serving_default")
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def rest(server, path: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{server.rest}{path}", data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

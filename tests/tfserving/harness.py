"""TF Serving's model-server test harness (`tensorflow_model_server_test_base.py`) for `kdeploy serve`.

`run_server` takes the arguments of TF Serving's `RunServer` and starts `kdeploy serve` with the matching flags
(`--model_name`/`--model_base_path` → `--model-name`/`--model-dir`, `--prefer_tflite_model` → `--backend tflite`,
TF models → `--backend savedmodel`, `--model_config_file_poll_wait_seconds` → `--model-config-file-poll-seconds`,
...), on free ports, one server per set of arguments as upstream caches them. `verify_predict_request` is upstream's
`VerifyPredictRequest`: the same request, built with the official `tensorflow-serving-api` protos, and the same
assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from tests.conftest import ServerProcess, start_server

TESTDATA = Path(__file__).resolve().parent.parent / "data" / "tfserving" / "testdata"
"""TF Serving's `tensorflow_serving/servables/tensorflow/testdata`, unchanged (see its README)."""
RPC_TIMEOUT = 20.0
DEFAULT_SIGNATURE = "serving_default"


def model_path(name: str) -> Path:
    """Upstream's `_GetSavedModelBundlePath()` and friends: a model folder of the test data."""
    return TESTDATA / name


SAVED_MODEL_BUNDLE = "saved_model_half_plus_two_cpu"
"""`_GetSavedModelBundlePath`: the TF1 half_plus_two."""
HALF_PLUS_TWO_TF2 = "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_THREE = "saved_model_half_plus_three"
TFLITE = "saved_model_half_plus_two_tflite"
TFLITE_WITH_SIGDEF = "saved_model_half_plus_two_tflite_with_sigdef"


def model_version(path: Path) -> int:
    """Upstream's `_GetModelVersion`: the one version folder's name as a number (`00000123` is 123)."""
    return int(os.listdir(path)[0])


class Servers:
    """Upstream's `RunServer`, one `kdeploy serve` per set of arguments, all stopped by `close`."""

    def __init__(self) -> None:
        self._running: dict[tuple, ServerProcess] = {}
        self._folder = Path(tempfile.mkdtemp(prefix="kdeploy-tfs-"))

    def run_server(self, model_name: str | None, model_path: Path | None, *, model_type: str = "tf",
                   model_config_file: Path | None = None, monitoring_config_file: Path | None = None,
                   batching_parameters_file: Path | None = None, grpc_channel_arguments: str = "",
                   model_config_file_poll_period: float | None = None, extra: tuple[str, ...] = ()
                   ) -> ServerProcess:
        """Start (or reuse) a server; `server.grpc`, `server.rest` and `server.socket` are its addresses."""
        key = (model_name, str(model_path), model_type, str(model_config_file), str(monitoring_config_file),
               str(batching_parameters_file), grpc_channel_arguments, model_config_file_poll_period, extra)
        if key in self._running:
            return self._running[key]
        socket = self._folder / f"grpc-{len(self._running)}.sock"
        args = ["--backend", "tflite" if model_type == "tflite" else "savedmodel", "--grpc-socket-path", socket]
        if model_config_file is not None:
            args += ["--model-config-file", model_config_file]
        elif model_path is not None:
            args += ["--model-dir", model_path, "--model-name", model_name]
        else:
            raise ValueError("Both model_config_file and model_path cannot be empty!")
        if monitoring_config_file is not None:
            args += ["--monitoring-config-file", monitoring_config_file]
        if model_config_file_poll_period is not None:
            args += ["--model-config-file-poll-seconds", model_config_file_poll_period]
        if batching_parameters_file is not None:
            args += ["--enable-batching", "--batching-parameters-file", batching_parameters_file]
        if grpc_channel_arguments:
            args += ["--grpc-channel-arguments", grpc_channel_arguments]
        server = start_server(*args, *extra)
        server.socket = f"unix:{socket}"  # type: ignore[attr-defined]
        self._running[key] = server
        return server

    def close(self) -> None:
        for server in self._running.values():
            assert server.stop() == 0, server.log()
        self._running.clear()
        shutil.rmtree(self._folder, ignore_errors=True)


def run_server_that_fails(*args: object) -> subprocess.CompletedProcess[str]:
    """`kdeploy serve ARGS` expected to exit at start-up (upstream's `wait_for_server_ready=False, pipe=PIPE`)."""
    return subprocess.run([sys.executable, "-m", "kdeploy", "serve", "--grpc-port", "0", "--rest-port", "0",
                           "--metrics-port", "0", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def verify_predict_request(address: str, expected_output: float, expected_version: int, *,
                           model_name: str = "default", specify_output: bool = True, batch_input: bool = False,
                           signature_name: str = DEFAULT_SIGNATURE, rpc_timeout: float = RPC_TIMEOUT) -> None:
    """Upstream's `VerifyPredictRequest`: x = [2.0] (shape [1], or [1, 1] with `batch_input`), typed float_val."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    with grpc.insecure_channel(address) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, rpc_timeout)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected_output
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)


def verify_model_spec(actual, exp_model_name: str, exp_signature_name: str, exp_version: int) -> None:
    """Upstream's `_VerifyModelSpec`."""
    assert actual.name == exp_model_name
    assert actual.signature_name == exp_signature_name
    assert actual.version.value == exp_version


def call_rest(url: str, req: object | None) -> bytes:
    """Upstream's `CallREST` (one attempt: the server is up once `run_server` returns)."""
    data = json.dumps(req).encode("utf-8") if req is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=RPC_TIMEOUT) as response:
        return response.read()


def rest_call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """Any REST call: (status, headers, body), errors included (the REST handler test checks their status)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def sorted_object(obj: object) -> object:
    """Upstream's `SortedObject`: lists and dicts sorted recursively, for order-free comparison."""
    if isinstance(obj, dict):
        return sorted((k, sorted_object(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return sorted(sorted_object(x) for x in obj)
    if isinstance(obj, tuple):
        return list(sorted(sorted_object(x) for x in obj))
    return obj

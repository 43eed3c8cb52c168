"""Clients for a running model server, with the `Backend` interface: TF Serving gRPC and REST, KServe v2 gRPC and
REST (binary tensors).

They let served-output parity (`kdeploy verify --endpoint`) treat kdeploy's server, TF Serving or Triton like any
other runtime. TF-free: messages come from the vendored protocol definitions.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import Feed, ModelSignature
from kdeploy.wire.kserve_rest import INFERENCE_HEADER, infer_request_body, model_path, outputs_from_response
from kdeploy.wire.protocols import GRPC_METHODS, PROTOCOLS
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import fill_tensor_proto, kserve_datatype, ndarray_from_tensor_proto, raw_bytes
from kdeploy.wire.tls import ClientTls, http_opener, secure_channel


class ServedModelError(Exception):
    """The server answered a request with an error."""


class _GrpcClient:
    def __init__(self, address: str, timeout: float, tls: ClientTls | None = None) -> None:
        self._channel = secure_channel(address, tls, options=[("grpc.max_receive_message_length", 256 << 20),
                                                              ("grpc.max_send_message_length", 256 << 20)])
        self._timeout = timeout
        try:
            grpc.channel_ready_future(self._channel).result(timeout=min(timeout, 5.0))
        except grpc.FutureTimeoutError:
            self._channel.close()
            hint = (" over TLS (check --tls-ca, --tls-cert and --tls-server-name; the server's log says why it refused)"
                    if tls else " (a TLS server needs --tls-ca or --tls)")
            raise UsageError(f"cannot reach a gRPC server at {address}{hint}") from None

    def _call(self, path: str, request: Any, response_type: Any) -> Any:
        method = self._channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_type.FromString)
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise ServedModelError(f"{exc.code().name}: {exc.details()}") from None

    def close(self) -> None:
        self._channel.close()


class TfServingGrpcClient(_GrpcClient):
    """`tensorflow.serving.PredictionService/Predict` with `tensor_content` tensors."""

    format = "tfserving-grpc"

    def __init__(self, address: str, model: str, version: int | None, signature: ModelSignature,
                 timeout: float = 30.0, tls: ClientTls | None = None) -> None:
        super().__init__(address, timeout, tls)
        protos = load_protos()
        self._request_type = protos.cls("tensorflow.serving.PredictRequest")
        self._response_type = protos.cls("tensorflow.serving.PredictResponse")
        self._model, self._version, self.signature = model, version, signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        request = self._request_type()
        request.model_spec.name = self._model
        if self._version is not None:
            request.model_spec.version.value = self._version
        for name, value in feed.items():
            fill_tensor_proto(request.inputs[name], value)
        response = self._call(GRPC_METHODS["tfserving-grpc"], request, self._response_type)
        return {spec.name: ndarray_from_tensor_proto(spec.name, response.outputs[spec.name], spec)
                for spec in self.signature.outputs}


class KServeGrpcClient(_GrpcClient):
    """`inference.GRPCInferenceService/ModelInfer` with raw tensors."""

    format = "kserve-grpc"

    def __init__(self, address: str, model: str, version: int | None, signature: ModelSignature,
                 timeout: float = 30.0, tls: ClientTls | None = None) -> None:
        super().__init__(address, timeout, tls)
        protos = load_protos()
        self._request_type = protos.cls("inference.ModelInferRequest")
        self._response_type = protos.cls("inference.ModelInferResponse")
        self._model, self._version, self.signature = model, version, signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        request = self._request_type(model_name=self._model, model_version=str(self._version or ""))
        for name, value in feed.items():
            request.inputs.add(name=name, datatype=kserve_datatype(value), shape=list(value.shape))
            request.raw_input_contents.append(raw_bytes(value))
        response = self._call(GRPC_METHODS["kserve-grpc"], request, self._response_type)
        outputs = {}
        for index, tensor in enumerate(response.outputs):
            spec = self.signature.output(tensor.name)
            if response.raw_output_contents:
                values = np.frombuffer(response.raw_output_contents[index], dtype=spec.np_dtype.newbyteorder("<"))
            else:
                values = np.asarray(_typed_contents(tensor.contents), dtype=spec.np_dtype)
            outputs[tensor.name] = values.reshape(list(tensor.shape))
        return outputs


def _typed_contents(contents: Any) -> list[Any]:
    for field in ("fp32_contents", "fp64_contents", "int_contents", "int64_contents", "uint_contents",
                  "uint64_contents", "bool_contents"):
        values = getattr(contents, field)
        if len(values):
            return list(values)
    return []


class TfServingRestClient:
    """TF Serving's REST `:predict` in the columnar format (`inputs` / `outputs`)."""

    format = "tfserving-rest"

    def __init__(self, address: str, model: str, version: int | None, signature: ModelSignature,
                 timeout: float = 30.0, tls: ClientTls | None = None) -> None:
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
        self._url = f"{'https' if tls else 'http'}://{address}{path}"
        self._timeout, self.signature = timeout, signature
        self._context = tls.ssl_context() if tls else None
        try:
            with urllib.request.urlopen(self._url, timeout=min(timeout, 5.0), context=self._context):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered: reachable (the model error shows on the first predict)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot reach a REST server at {address}: {exc}") from None

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        body = json.dumps({"inputs": {name: value.tolist() for name, value in feed.items()}}).encode()
        request = urllib.request.Request(self._url + ":predict", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServedModelError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        outputs = payload["outputs"]
        if not isinstance(outputs, dict):
            outputs = {self.signature.outputs[0].name: outputs}
        return {spec.name: np.asarray(outputs[spec.name], dtype=spec.np_dtype) for spec in self.signature.outputs}

    def close(self) -> None:
        pass


class KServeRestClient:
    """KServe v2 `POST /v2/models/NAME[/versions/V]/infer` with binary tensors both ways (Triton's extension)."""

    format = "kserve-rest"

    def __init__(self, address: str, model: str, version: int | None, signature: ModelSignature,
                 timeout: float = 30.0, tls: ClientTls | None = None) -> None:
        scheme = "https" if tls else "http"
        self._url = f"{scheme}://{address}{model_path(model, version)}"
        self._timeout, self.signature = timeout, signature
        self._opener = http_opener(tls)
        try:
            with self._opener.open(f"{scheme}://{address}/v2/health/live", timeout=min(timeout, 5.0)):
                pass
        except urllib.error.HTTPError as exc:
            raise UsageError(f"{address} answered HTTP {exc.code} to /v2/health/live: is it a KServe v2 REST port?"
                             ) from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot reach a REST server at {address}: {exc}") from None

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        body, length = infer_request_body(feed, binary=True)
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers[INFERENCE_HEADER] = str(length)
        request = urllib.request.Request(self._url + "/infer", data=body, method="POST", headers=headers)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                data, header = response.read(), response.headers.get(INFERENCE_HEADER)
        except urllib.error.HTTPError as exc:
            raise ServedModelError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        return outputs_from_response(data, None if header is None else int(header))

    def close(self) -> None:
        pass


def connect(protocol: str, address: str, model: str, version: int | None, signature: ModelSignature,
            tls: ClientTls | None = None) -> Any:
    """A client for `protocol` at `address` (over TLS with `tls`), checked to be reachable.

    Raises:
        UsageError: for an unknown protocol or an address where nothing answers.
    """
    clients = {"tfserving-grpc": TfServingGrpcClient, "kserve-grpc": KServeGrpcClient,
               "tfserving-rest": TfServingRestClient, "kserve-rest": KServeRestClient}
    if protocol not in clients:
        raise UsageError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return clients[protocol](address, model, version, signature, tls=tls)

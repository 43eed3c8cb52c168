"""The model's signature as a server describes it, and the reachability check that comes with asking.

TF Serving's `GetModelMetadata` (gRPC, and `GET /v1/models/NAME/metadata` over REST) answers with a
`SignatureDefMap`; KServe v2's `ModelMetadata` (gRPC, and `GET /v2/models/NAME` over REST) with tensor names,
datatypes and shapes. Both become a
`ModelSignature`, so a load test can run against a server whose repository is not at hand (TF Serving, Triton).
Asking is also the preflight: an unreachable target, an unknown model or the wrong protocol is reported within
the timeout, before Locust starts.
"""

from __future__ import annotations

import json
import logging
import urllib.error
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import DTYPES, STRING, ModelSignature, SignatureError, TensorSpec
from kdeploy.wire.kserve_rest import model_path
from kdeploy.wire.protocols import REST_PROTOCOLS
from kdeploy.wire.protos.messages import Protos, load_protos
from kdeploy.wire.tls import ClientTls, http_opener, secure_channel

logger = logging.getLogger(__name__)

TFS_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
KSERVE_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
DEFAULT_SIGNATURE = "serving_default"
GRPC_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Measure the server, not a proxy someone configured for the internet.
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)
# The load generator's payload codecs send numbers only: string tensors stay refused here until they learn strings.
_BY_TF_ENUM = {d.tf_enum: d.name for d in DTYPES if d.name != STRING}
_BY_KSERVE = {d.kserve: d.name for d in DTYPES if d.name != STRING}


def _shape(dims: list[int]) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else int(d) for d in dims)


def _tensor_from_info(name: str, info: Any) -> TensorSpec:
    if info.tensor_shape.unknown_rank:
        raise UsageError(f"the server gives tensor {name!r} an unknown rank; load it with --repository instead")
    dtype = _BY_TF_ENUM.get(info.dtype)
    if dtype is None:
        raise UsageError(f"tensor {name!r} has a dtype kdeploy cannot send (DataType {info.dtype})")
    return TensorSpec(name=name, dtype=dtype, shape=_shape([d.size for d in info.tensor_shape.dim]))


def signature_from_signature_def_map(signature_map: Any) -> ModelSignature:
    """The `serving_default` entry of a TF Serving `SignatureDefMap` (inputs in name order)."""
    if DEFAULT_SIGNATURE not in signature_map.signature_def:
        raise UsageError(f"the model has no {DEFAULT_SIGNATURE!r} signature "
                         f"(it has {sorted(signature_map.signature_def)})")
    signature_def = signature_map.signature_def[DEFAULT_SIGNATURE]
    try:
        return ModelSignature(
            inputs=tuple(_tensor_from_info(n, signature_def.inputs[n]) for n in sorted(signature_def.inputs)),
            outputs=tuple(_tensor_from_info(n, signature_def.outputs[n]) for n in sorted(signature_def.outputs)),
        )
    except SignatureError as exc:
        raise UsageError(f"cannot use the server's signature: {exc}") from None


def signature_from_tfserving_metadata(response: Any, protos: Protos) -> ModelSignature:
    """A `GetModelMetadataResponse` as a signature."""
    packed = response.metadata.get("signature_def")
    if packed is None or not packed.type_url.endswith("tensorflow.serving.SignatureDefMap"):
        raise UsageError("the server's metadata holds no SignatureDefMap")
    signature_map = protos.cls("tensorflow.serving.SignatureDefMap").FromString(packed.value)
    return signature_from_signature_def_map(signature_map)


def signature_from_kserve_metadata(response: Any) -> ModelSignature:
    """A KServe v2 `ModelMetadataResponse` as a signature."""
    def spec(tensor: Any) -> TensorSpec:
        dtype = _BY_KSERVE.get(tensor.datatype)
        if dtype is None:
            raise UsageError(f"tensor {tensor.name!r} has datatype {tensor.datatype}, which kdeploy cannot send")
        return TensorSpec(name=tensor.name, dtype=dtype, shape=_shape(list(tensor.shape)))

    try:
        return ModelSignature(inputs=tuple(spec(t) for t in response.inputs),
                              outputs=tuple(spec(t) for t in response.outputs))
    except SignatureError as exc:
        raise UsageError(f"cannot use the server's signature: {exc}") from None


def signature_from_rest_metadata(body: Mapping[str, Any], protos: Protos) -> ModelSignature:
    """TF Serving REST metadata JSON (`{"metadata": {"signature_def": {...}}}`) as a signature."""
    try:
        data = body["metadata"]["signature_def"]
    except (KeyError, TypeError):
        raise UsageError("the server's REST metadata has no metadata.signature_def") from None
    signature_map = protos.cls("tensorflow.serving.SignatureDefMap")()
    try:
        json_format.ParseDict(data, signature_map, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise UsageError(f"cannot read the server's REST metadata: {exc}") from None
    return signature_from_signature_def_map(signature_map)


def signature_from_kserve_rest_metadata(body: Mapping[str, Any], protos: Protos) -> ModelSignature:
    """KServe v2 REST model metadata JSON (`{"name", "inputs": [...], "outputs": [...]}`) as a signature."""
    response = protos.cls("inference.ModelMetadataResponse")()
    try:
        json_format.ParseDict(body, response, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise UsageError(f"cannot read the server's KServe v2 metadata: {exc}") from None
    return signature_from_kserve_metadata(response)


def _grpc_problem(exc: grpc.RpcError, protocol: str, address: str, model: str, timeout_s: float,
                  tls: ClientTls | None = None) -> UsageError:
    code, details = exc.code(), exc.details()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # gRPC reports a failed TLS handshake (either side refusing) as a closed or unreachable connection.
        hint = ("; over TLS: check --tls-ca, --tls-cert/--tls-key and --tls-server-name" if tls
                else "; a TLS server needs --tls or --tls-ca")
        return UsageError(f"cannot reach {address} ({protocol}) within {timeout_s:g} s: {code.name}: {details}{hint}")
    if code is grpc.StatusCode.NOT_FOUND:
        return UsageError(f"{address} does not serve model {model!r}: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return UsageError(f"{address} does not speak {protocol} (UNIMPLEMENTED: {details}); check --protocol")
    return UsageError(f"{address} refused the metadata request for {model!r}: {code.name}: {details}")


def _fetch_grpc(protocol: str, address: str, model: str, version: int | None, timeout_s: float,
                tls: ClientTls | None) -> ModelSignature:
    protos = load_protos()
    if protocol == "tfserving-grpc":
        request = protos.cls("tensorflow.serving.GetModelMetadataRequest")(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        path, response_cls = TFS_METADATA, protos.cls("tensorflow.serving.GetModelMetadataResponse")
    else:
        request = protos.cls("inference.ModelMetadataRequest")(name=model,
                                                               version="" if version is None else str(version))
        path, response_cls = KSERVE_METADATA, protos.cls("inference.ModelMetadataResponse")
    with secure_channel(address, tls, options=GRPC_CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_cls.FromString)
        try:
            response = call(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _grpc_problem(exc, protocol, address, model, timeout_s, tls) from None
    if protocol == "tfserving-grpc":
        return signature_from_tfserving_metadata(response, protos)
    return signature_from_kserve_metadata(response)


def _fetch_rest(protocol: str, address: str, model: str, version: int | None, timeout_s: float,
                tls: ClientTls | None) -> ModelSignature:
    scheme = "https" if tls else "http"
    if protocol == "kserve-rest":
        url = f"{scheme}://{address}{model_path(model, version)}"
    else:
        versions = "" if version is None else f"/versions/{version}"
        url = f"{scheme}://{address}/v1/models/{model}{versions}/metadata"
    try:
        with http_opener(tls).open(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        if exc.code == 404:
            raise UsageError(f"{address} does not serve model {model!r}: HTTP 404 {detail}") from None
        raise UsageError(f"{address} refused the metadata request for {model!r}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"cannot reach {address} ({protocol}) within {timeout_s:g} s: {reason}") from None
    except ValueError:
        raise UsageError(f"{url} did not answer with JSON; is {address} a {protocol} port?") from None
    if protocol == "kserve-rest":
        return signature_from_kserve_rest_metadata(body, load_protos())
    return signature_from_rest_metadata(body, load_protos())


def fetch_signature(protocol: str, address: str, model: str, version: int | None, timeout_s: float,
                    tls: ClientTls | None = None) -> ModelSignature:
    """Ask the server for the model's signature over `protocol` (over TLS with `tls`).

    Args:
        protocol: one of `kdeploy.loadtest.config.PROTOCOLS`.
        address: `HOST:PORT`.
        model: model name.
        version: a version number, or `None` for the server's choice.
        timeout_s: the whole call's deadline.
        tls: TLS settings, or None for plaintext.

    Raises:
        UsageError: when the server cannot be reached in time, does not serve the model, or speaks another protocol.
    """
    if protocol in REST_PROTOCOLS:
        return _fetch_rest(protocol, address, model, version, timeout_s, tls)
    return _fetch_grpc(protocol, address, model, version, timeout_s, tls)

"""Request bodies, built once per process from the model's signature and serialized for one protocol.

Rows come from `--data` (an .npz, or a payload log `kdeploy serve` wrote), else the version's `validation.npz`,
else inputs generated from the signature. A small pool of distinct batches is encoded up front (TF Serving
`tensor_content`, KServe v2 `raw_input_contents`, TF Serving REST columnar JSON, KServe v2 REST binary tensors), so
a load user only hands bytes to the wire and the generator's CPU goes to sending.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import read_manifest
from kdeploy.contract.repository import resolve_version_dir
from kdeploy.contract.signature import Feed, ModelSignature, batch_size, load_data_file
from kdeploy.loadtest.config import WorkloadSettings
from kdeploy.wire.kserve_rest import infer_request_body, model_path
from kdeploy.wire.payload_log import is_payload_log, read_payload_log, replay_rows, stacked_inputs
from kdeploy.wire.protocols import GRPC_METHODS, REST_PROTOCOLS
from kdeploy.wire.protos.messages import Protos, load_protos
from kdeploy.wire.tensors import fill_tensor_proto, kserve_datatype, raw_bytes

logger = logging.getLogger(__name__)

POOL_SIZE = 16
"""Distinct request bodies per run: enough that the server does not see one input only, small to build."""


@dataclass(frozen=True)
class Payloads:
    """Serialized requests for one model over one protocol."""

    protocol: str
    name: str
    """The request's name in Locust's statistics (`Predict digits`, `/v1/models/digits:predict`)."""
    path: str
    """gRPC method path, or the REST URL path."""
    bodies: tuple[bytes, ...]
    batch: int
    header_lengths: tuple[int | None, ...] = ()
    """KServe v2 REST: each body's `Inference-Header-Content-Length` (its JSON part before the binary tensors)."""

    @property
    def request_type(self) -> str:
        return "POST" if self.protocol in REST_PROTOCOLS else "grpc"


def version_dir_for(repository: Path, model: str, version: int | None) -> Path:
    """The version folder whose manifest describes the payload.

    `repository` is a repository root (`REPO/MODEL` is used), or a model or version folder itself, which lets a
    payload built for one model be sent to a model served under another name.

    Raises:
        UsageError: when no such model or version exists.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise UsageError(f"repository {repository} does not exist")
    if (repository / model).is_dir():
        return resolve_version_dir(repository / model, version)
    is_version = (repository / "manifest.json").is_file()
    is_model = any(p.is_dir() and p.name.isdigit() for p in repository.iterdir())
    if not (is_version or is_model):
        raise UsageError(f"no model {model!r} in {repository} ({repository / model} does not exist)")
    return resolve_version_dir(repository, version)


def request_feeds(signature: ModelSignature, batch: int, rows: Feed | None, seed: int = 0,
                  pool_size: int = POOL_SIZE) -> list[dict[str, np.ndarray]]:
    """Up to `pool_size` distinct batches of `batch` rows (rows wrap around when there are fewer)."""
    for spec in signature.inputs:
        if spec.shape[0] is not None and spec.shape[0] != batch:
            raise UsageError(f"input {spec.name!r} has a fixed batch dimension of {spec.shape[0]}; "
                             f"pass --batch {spec.shape[0]}")
    if rows is None:
        rows = signature.generate_feed(batch * pool_size, np.random.default_rng(seed))
    available = batch_size(rows)
    if available == 0:
        raise UsageError("the input rows are empty")
    count = min(pool_size, max(1, available // batch))
    feeds = []
    for k in range(count):
        index = np.arange(k * batch, (k + 1) * batch)
        feeds.append({name: np.take(values, index, axis=0, mode="wrap") for name, values in rows.items()})
    return feeds


def predict_request_bytes(protos: Protos, model: str, version: int | None, feed: Mapping[str, np.ndarray]) -> bytes:
    """A serialized TF Serving `PredictRequest` with every input in `tensor_content`."""
    request = protos.cls("tensorflow.serving.PredictRequest")()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    for name, array in feed.items():
        fill_tensor_proto(request.inputs[name], array)
    return request.SerializeToString()


def model_infer_request_bytes(protos: Protos, model: str, version: int | None,
                              feed: Mapping[str, np.ndarray]) -> bytes:
    """A serialized KServe v2 `ModelInferRequest` with every input in `raw_input_contents`."""
    request = protos.cls("inference.ModelInferRequest")(model_name=model,
                                                          model_version="" if version is None else str(version))
    for name, array in feed.items():
        request.inputs.add(name=name, datatype=kserve_datatype(array), shape=list(array.shape))
        request.raw_input_contents.append(raw_bytes(array))
    return request.SerializeToString()


def rest_predict_body(feed: Mapping[str, np.ndarray]) -> bytes:
    """TF Serving REST `:predict` JSON in the columnar (`inputs`) format, which takes any number of inputs."""
    body = {"signature_name": "serving_default", "inputs": {name: array.tolist() for name, array in feed.items()}}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def rest_predict_path(model: str, version: int | None) -> str:
    return f"/v1/models/{model}" + ("" if version is None else f"/versions/{version}") + ":predict"


def kserve_infer_path(model: str, version: int | None) -> str:
    return model_path(model, version) + "/infer"


def encode_payloads(settings: WorkloadSettings, feeds: list[dict[str, np.ndarray]]) -> Payloads:
    """Serialize each feed once for the settings' protocol."""
    model, version, protocol = settings.model, settings.model_version, settings.protocol
    if protocol == "tfserving-rest":
        bodies = [rest_predict_body(f) for f in feeds]
        return Payloads(protocol, rest_predict_path(model, version), rest_predict_path(model, version),
                        tuple(bodies), settings.batch)
    if protocol == "kserve-rest":  # binary tensors both ways, as tritonclient.http and perf_analyzer send them
        encoded = [infer_request_body(f, binary=True) for f in feeds]
        path = kserve_infer_path(model, version)
        return Payloads(protocol, path, path, tuple(b for b, _ in encoded), settings.batch,
                        tuple(length for _, length in encoded))
    protos = load_protos()
    encode = predict_request_bytes if protocol == "tfserving-grpc" else model_infer_request_bytes
    bodies = [encode(protos, model, version, f) for f in feeds]
    method = GRPC_METHODS[protocol].rsplit("/", 1)[1]
    return Payloads(protocol, f"{method} {model}", GRPC_METHODS[protocol], tuple(bodies), settings.batch)


def signature_and_rows(settings: WorkloadSettings, address: str,
                       timeout_s: float) -> tuple[ModelSignature, Feed | None]:
    """The signature (from the repository or the server) and the input rows to send, if any."""
    version_dir: Path | None = None
    if settings.signature_from_server:
        from kdeploy.loadtest.metadata import fetch_signature

        signature = fetch_signature(settings.protocol, address, settings.model, settings.model_version, timeout_s,
                                    tls=settings.tls)
    else:
        assert settings.repository is not None  # WorkloadSettings requires one of the two
        version_dir = version_dir_for(settings.repository, settings.model, settings.model_version)
        signature = read_manifest(version_dir).signature
    if settings.data is not None:
        if is_payload_log(settings.data):  # the requests a server logged, replayed row for row
            records = replay_rows(read_payload_log(settings.data, settings.model), signature)
            return signature, stacked_inputs(records)
        return signature, load_data_file(settings.data, signature)[0]
    if version_dir is not None:
        manifest = read_manifest(version_dir)
        if manifest.validation_data and (version_dir / manifest.validation_data).is_file():
            return signature, load_data_file(version_dir / manifest.validation_data, signature)[0]
    return signature, None


def build_payloads(settings: WorkloadSettings, address: str, timeout_s: float = 10.0) -> Payloads:
    """Everything a load user sends, built once.

    Raises:
        UsageError: when the signature cannot be found or the rows do not fit it.
    """
    signature, rows = signature_and_rows(settings, address, timeout_s)
    payloads = encode_payloads(settings, request_feeds(signature, settings.batch, rows, settings.seed))
    logger.info("%d request bodies of %d row(s) for %s over %s (%s)", len(payloads.bodies), settings.batch,
                settings.model, settings.protocol, "validation rows" if rows is not None else "generated inputs")
    return payloads

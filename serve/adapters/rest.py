"""TF Serving's REST API: requests in, (HTTP status, JSON body) out, independent of the HTTP server.

`serve/rest_server.py` serves it over HTTP (aiohttp, on the gRPC front end's event loop). Routes:
`GET /v1/models/NAME[/versions/V | /labels/L]`, the same with `/metadata` (every signature), `POST ...:predict` in
the row (`instances`) and columnar (`inputs`) formats, and `POST ...:classify` and `...:regress` with tf.Examples
as JSON (`{"examples": [{"feature": value or [values]}], "context": {...}}`). Each POST may name a
`signature_name`. Errors are `{"error": "..."}` with the status that `kdeploy.serve.errors.HTTP_STATUS` gives for
the error's kind.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Container
from typing import Any
from urllib.parse import unquote

import numpy as np
from google.protobuf import json_format

from kdeploy.contract.signature import (
    DEFAULT_SIGNATURE,
    ModelSignature,
    SignatureError,
)
from kdeploy.serve.adapters import tasks
from kdeploy.serve.adapters.tfserving import signature_def_map
from kdeploy.serve.errors import HTTP_STATUS, HTTP_TO_GRPC_NAME, INTERNAL_MESSAGE
from kdeploy.serve.metrics import UNKNOWN_MODEL, ServerMetrics
from kdeploy.serve.models import ServedVersion
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ServeError, invalid, not_found
from kdeploy.wire.examples import fill_example_from_json
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import json_value, ndarray_from_json

logger = logging.getLogger(__name__)

# TF Serving's two path patterns (http_rest_api_util.cc), case-insensitive as there: POST for inference, GET for
# status and metadata; any other /v1/ request is "Malformed request" (400).
_POST_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r":(?P<method>classify|regress|predict)", re.IGNORECASE)
_GET_ROUTE = re.compile(r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?:/(?P<sub>metadata))?", re.IGNORECASE)
_V1 = re.compile(r"/v1(/|$)", re.IGNORECASE)
INT64_MAX = 2**63 - 1


class RestApi:
    """Translates TF Serving REST requests to the inference service and back."""

    def __init__(self, service: InferenceService, max_body_bytes: int, metrics: ServerMetrics | None = None,
                 known_models: Container[str] = frozenset()) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._known = known_models
        protos = load_protos()
        self._Example = protos.cls("tensorflow.Example")
        self._SignatureDefMap = protos.cls("tensorflow.serving.SignatureDefMap")
        self._pool = protos.pool

    async def handle(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        """Answer one request: (HTTP status, JSON body)."""
        started = time.perf_counter()
        try:
            status, payload = 200, await self._route(method, path, body)
        except ServeError as exc:
            status, payload = HTTP_STATUS[exc.kind], {"error": exc.message}
        except Exception:  # the server never dies on a request
            logger.exception("REST %s %s failed", method, path)
            status, payload = 500, {"error": INTERNAL_MESSAGE}
        self._count(path, status, started)
        return status, payload

    def _count(self, path: str, status: int, started: float) -> None:
        match = _POST_ROUTE.fullmatch(path.split("?", 1)[0])
        if self._metrics is None or not match:
            return
        name = unquote(match["name"])
        model = name if name in self._known else UNKNOWN_MODEL
        code = HTTP_TO_GRPC_NAME.get(status, "UNKNOWN")
        self._metrics.request_done(model, match["version"] or "", "tfserving-rest", code, time.perf_counter() - started)

    async def _route(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        path = path.split("?", 1)[0]
        route = _POST_ROUTE if method == "POST" else _GET_ROUTE if method == "GET" else None
        match = route.fullmatch(path) if route is not None else None
        if match is None:
            if not _V1.match(path):
                raise not_found(f"no such endpoint {path!r}; expected /v1/models/NAME[/versions/V|/labels/L]"
                                "[/metadata|:predict|:classify|:regress]")
            raise invalid(f"Malformed request: {method} {path}")
        name = unquote(match["name"] or "")
        version = _version(match["version"])
        label = unquote(match["label"]) if match["label"] else None
        if method == "POST":
            request = _json_object(body or b"")
            signature_name = request.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise invalid("'signature_name' key must be a string value.")
            with self.service.serving(name, version, label) as served:
                if match["method"].lower() == "predict":
                    return await self._predict(served, request, signature_name)
                return await self._classify_or_regress(served, request, signature_name, match["method"].lower())
        if not name:
            raise invalid("Missing model name in request.")
        if match["sub"]:
            return self._metadata(self.service.models.resolve(name, version, label))
        return self._status(name, version, label)

    def _status(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        if label:
            versions = [self.service.models.resolve(name, label=label)]
        else:
            versions = self.service.models.statuses(name, version)
        return {"model_version_status": [
            {"version": str(v.version), "state": v.state.name,
             "status": {"error_code": "UNAVAILABLE" if v.error else "OK", "error_message": v.error or ""}}
            for v in versions
        ]}

    def _metadata(self, served: ServedVersion) -> dict[str, Any]:
        """TF Serving's REST metadata: the SignatureDefMap printed as protobuf's JSON with every field (TF Serving's
        `always_print_fields_with_no_presence`), so `"defaults": {}` and `"unknown_rank": false` are there too."""
        signature_map = signature_def_map(served, self._SignatureDefMap())
        printed = json_format.MessageToDict(signature_map, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True,
                                            descriptor_pool=self._pool)
        return {"model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
                "metadata": {"signature_def": printed}}

    async def _predict(self, served: ServedVersion, request: dict[str, Any], signature_name: str) -> dict[str, Any]:
        try:
            signature = tasks.signature_of(served, signature_name)
        except SignatureError as exc:
            raise invalid(f'Serving signature name: "{signature_name or DEFAULT_SIGNATURE}" not found in signature '
                          f"def ({exc})") from None
        if ("instances" in request) == ("inputs" in request):
            raise invalid("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
        if "instances" in request:
            feed = _feed_from_instances(request["instances"], signature)
            outputs = (await self.service.infer_async(served, feed, signature_name=signature.name)).outputs
            return {"predictions": _rows(outputs)}
        feed = _feed_from_columns(request["inputs"], signature)
        outputs = (await self.service.infer_async(served, feed, signature_name=signature.name)).outputs
        if len(outputs) == 1:
            return {"outputs": json_value(next(iter(outputs.values())))}
        return {"outputs": {name: json_value(value) for name, value in outputs.items()}}

    async def _classify_or_regress(self, served: ServedVersion, request: dict[str, Any], signature_name: str,
                                   method: str) -> dict[str, Any]:
        """TF Serving's `:classify` and `:regress`: `{"results": [[[label, score], ...], ...]}` and
        `{"results": [value, ...]}`."""
        signature = tasks.task_signature(served, signature_name, method)
        examples = self._examples_from_json(request, method)
        if method == tasks.CLASSIFY:
            found = await tasks.classify(self.service, served, signature, examples, None)
            return {"results": [[[label, score] for label, score in row] for row in found.rows()]}
        return {"results": await tasks.regress(self.service, served, signature, examples, None)}

    def _examples_from_json(self, request: dict[str, Any], method: str) -> np.ndarray:
        """Serialized tf.Examples from the request's `examples` (each after the serialized `context`, when given, as
        TF Serving merges them)."""
        context = b""
        if "context" in request:
            example = self._Example()
            fill_example_from_json(example, request["context"])
            context = example.SerializeToString()
        values = request.get("examples")
        if values is None:
            raise invalid(f"When method is {method}, key 'examples' is expected and was not found")
        if not isinstance(values, list):
            raise invalid("Expecting 'examples' value to be an list/array")
        if not values:
            raise invalid("'examples' value is an empty array")
        batch = np.empty(len(values), dtype=object)
        for index, value in enumerate(values):
            example = self._Example()
            fill_example_from_json(example, value)
            batch[index] = context + example.SerializeToString()
        return batch


def _version(text: str | None) -> int | None:
    """A version from the path (digits, so never negative), refused beyond int64 as TF Serving refuses it."""
    if text is None:
        return None
    if int(text) > INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return int(text)


def _json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; errors in TF Serving's words ("JSON Parse error: ...")."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string ({exc})") from None
    except json.JSONDecodeError as exc:
        kind = "Invalid value" if exc.msg == "Expecting value" else exc.msg
        raise invalid(f"JSON Parse error: {kind} (line {exc.lineno} column {exc.colno})") from None
    if not isinstance(request, dict):
        raise invalid("JSON Parse error: the request body must be a JSON object")
    return request


def _spec(signature: ModelSignature, name: str) -> Any:
    try:
        return signature.input(name)
    except SignatureError as exc:
        raise invalid(str(exc)) from None


def _feed_from_instances(instances: Any, signature: ModelSignature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list of rows")
    names = signature.input_names
    # Objects name the inputs, except TF Serving's {"b64": "..."}, which is one value of a single string input.
    if all(isinstance(row, dict) and not _is_b64(row) for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise invalid("every instance must name the same inputs")
        return {key: ndarray_from_json(key, [row[key] for row in instances], _spec(signature, key)) for key in keys}
    if len(names) != 1:
        raise invalid(f"the model has inputs {names}: each instance must be an object naming them")
    return {names[0]: ndarray_from_json(names[0], instances, signature.inputs[0])}


def _is_b64(value: dict[str, Any]) -> bool:
    return set(value) == {"b64"} and isinstance(value["b64"], str)


def _feed_from_columns(inputs: Any, signature: ModelSignature) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {key: ndarray_from_json(key, value, _spec(signature, key)) for key, value in inputs.items()}
    names = signature.input_names
    if len(names) != 1:
        raise invalid(f"the model has inputs {names}: 'inputs' must be an object naming them")
    return {names[0]: ndarray_from_json(names[0], inputs, signature.inputs[0])}


def _rows(outputs: dict[str, np.ndarray]) -> list[Any]:
    """The row format (`predictions`), as TF Serving's MakeJsonFromTensors writes it: each output's own shape, its
    first dimension the rows (half_plus_two's `[3]` answer is `[3.0, 3.5, 4.0]`, a `[3, 1]` one `[[3.0], ...]`).
    Every output needs that dimension, and the same number of rows."""
    rows = None
    for name, value in outputs.items():
        if np.ndim(value) == 0:
            raise invalid(f"Tensor name: {name} has no shape information (the row format needs a batch dimension; "
                          "send 'inputs' for the columnar format)")
        if rows is not None and len(value) != rows:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {len(value)} expecting: {rows}")
        rows = len(value)
    if len(outputs) == 1:
        return json_value(next(iter(outputs.values())))
    return [{name: json_value(value[i]) for name, value in outputs.items()} for i in range(rows or 0)]

"""KServe v2 / Open Inference Protocol over HTTP, on the REST port beside TF Serving's `/v1` routes.

Routes (`[/versions/V]` optional everywhere a model is named):

- `GET /v2` server metadata (extensions `binary_tensor_data`, `model_configuration`, `statistics`);
  `GET /v2/health/live`, `GET /v2/health/ready` (200, or 503 while a model is not ready or the server drains);
- `GET /v2/models/NAME` model metadata, `GET /v2/models/NAME/ready` (200, 404 unknown, 503 not ready);
- `POST /v2/models/NAME/infer` with JSON tensors or the binary tensor extension (`kdeploy.wire.kserve_rest`);
- Triton's extensions as perf_analyzer and tritonclient call them: `GET /v2/models/NAME/config` (ModelConfig as
  JSON) and `GET /v2/models[/NAME]/stats` (ModelStatistics as JSON);
- KServe's model list, `GET /v2/models` and `GET /v1/models` (the one KServe v1 route that TF Serving does not use:
  `/v1/models/NAME` stays TF Serving's model status, and `:predict` with `instances` is the same request in both).

The metadata, config and statistics answers are the gRPC adapter's messages written as JSON, so both transports
say the same. Inference goes through the same `InferenceService` as gRPC (validation, batching, statistics,
deadlines from the request's `timeout` parameter) and is counted in the request metrics as protocol `kserve-rest`.
Errors are `{"error": "..."}` with the HTTP status of the error's kind (`kdeploy.serve.errors.HTTP_STATUS`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from kdeploy.serve.adapters.kserve_v2 import EXTENSIONS, KServeV2Adapter, unsent_input, version_number
from kdeploy.serve.errors import GRPC_STATUS, HTTP_STATUS, INTERNAL_MESSAGE
from kdeploy.serve.metrics import UNKNOWN_MODEL, ServerMetrics
from kdeploy.serve.models import ServedVersion, VersionState
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ErrorKind, ServeError, invalid, not_found, unavailable
from kdeploy.wire.kserve_rest import (
    BINARY_EXTENSION,
    INFERENCE_HEADER,
    RestInferRequest,
    header_length_of,
    infer_request_from_body,
    infer_response_body,
    ndarray_from_rest,
    raw_input_tensor,
)

logger = logging.getLogger(__name__)

PROTOCOL = "kserve-rest"
"""The protocol label of these requests in the metrics."""
REST_EXTENSIONS = (BINARY_EXTENSION, *EXTENSIONS)

_MODEL = r"/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer|/config|/stats)?"
_ROUTE = re.compile(rf"^/v2(?:(?P<health>/health/live|/health/ready)|(?P<list>/models)|(?P<all_stats>/models/stats)"
                    rf"|{_MODEL})?/?$")
_V1_MODELS = re.compile(r"^/v1/models/?$")
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def is_kserve_path(path: str, method: str = "GET") -> bool:
    """Whether a request belongs here (`/v2...`, and KServe v1's `GET /v1/models`; any other method on
    `/v1/models` is TF Serving's, which answers it "Malformed request")."""
    path = path.split("?", 1)[0]
    return path == "/v2" or path.startswith("/v2/") or (method == "GET" and bool(_V1_MODELS.match(path)))


@dataclass(frozen=True, slots=True)
class RestReply:
    """An HTTP answer: status, body, and the JSON part's length when binary data follows it."""

    status: int
    body: bytes
    header_length: int | None = None


class KServeRestApi:
    """Translates KServe v2 HTTP requests to the inference service (and the gRPC adapter's answers) and back."""

    def __init__(self, service: InferenceService, grpc_adapter: KServeV2Adapter,
                 metrics: ServerMetrics | None = None, known_models: Container[str] = frozenset()) -> None:
        self.service = service
        self._grpc = grpc_adapter
        self._metrics = metrics
        self._known = known_models

    async def handle(self, method: str, path: str, body: bytes | None, header_length: str | None = None) -> RestReply:
        """Answer one request; never raises."""
        started = time.perf_counter()
        match = _ROUTE.match(path.split("?", 1)[0])
        try:
            if match and match["tail"] == "/infer":
                return await self._infer(method, match, body or b"", header_length, started)
            return _reply(200, self._route(method, path, match))
        except ServeError as exc:
            return _reply(HTTP_STATUS[exc.kind], {"error": exc.message})
        except Exception:  # the server never dies on a request
            logger.exception("KServe REST %s %s failed", method, path)
            return _reply(500, {"error": INTERNAL_MESSAGE})

    def _route(self, method: str, path: str, match: re.Match[str] | None) -> dict[str, Any]:
        if match is None:
            if _V1_MODELS.match(path.split("?", 1)[0]):
                _check_method(method, "GET", path)
                return {"models": self.service.models.model_names}
            raise not_found(f"no such endpoint {path!r}; KServe v2 has /v2, /v2/health/live|ready and "
                            "/v2/models/NAME[/versions/V][/ready|/infer|/config|/stats]")
        _check_method(method, "GET", path)
        if match["health"] == "/health/live":
            return {"live": True}
        if match["health"] == "/health/ready":
            return self._server_ready()
        if match["list"]:
            return {"models": self.service.models.model_names}
        if match["all_stats"]:
            return self._message("ModelStatistics", {})
        if match["name"] is None:
            metadata = self._message("ServerMetadata", {})
            return {**metadata, "extensions": list(REST_EXTENSIONS)}
        name = urllib.parse.unquote(match["name"])
        version = urllib.parse.unquote(match["version"] or "")
        tail = match["tail"]
        if tail == "/ready":
            return self._model_ready(name, version)
        if tail == "/stats":
            return self._message("ModelStatistics", {"name": name, "version": version})
        if tail == "/config":
            return self._message("ModelConfig", {"name": name, "version": version})["config"]
        return self._message("ModelMetadata", {"name": name, "version": version})

    def _server_ready(self) -> dict[str, Any]:
        if self.service.draining:
            raise unavailable("the server is shutting down")
        if not self.service.models.is_ready():
            waiting = [n for n in self.service.models.model_names if not self.service.models.is_ready(n)]
            raise unavailable(f"not every model is ready (waiting for {', '.join(waiting)})")
        return {"ready": True}

    def _model_ready(self, name: str, version_text: str) -> dict[str, Any]:
        version = version_number(name, version_text)
        statuses = self.service.models.statuses(name, version)  # NOT_FOUND for an unknown model or version
        if not any(s.state is VersionState.AVAILABLE for s in statuses):
            states = ", ".join(f"{s.version}: {s.state.name}" for s in statuses)
            raise unavailable(f"model {name!r} is not ready (versions {states})")
        return {"name": name, "ready": True}

    def _message(self, rpc: str, fields: dict[str, str]) -> dict[str, Any]:
        """The gRPC adapter's answer to `rpc`, as JSON (64-bit integers as numbers, as Triton writes them)."""
        request = self._grpc.request_types[rpc](**fields)
        return json_from_message(getattr(self._grpc, rpc)(request, None))

    async def _infer(self, method: str, match: re.Match[str], body: bytes, header_text: str | None,
                     started: float) -> RestReply:
        name = urllib.parse.unquote(match["name"])
        status, served_version = "OK", ""
        try:
            _check_method(method, "POST", match.string)
            request = infer_request_from_body(body, header_length_of(header_text, len(body)))
            version = version_number(name, urllib.parse.unquote(match["version"] or ""))
            with self.service.serving(name, version) as served:
                served_version = str(served.version)
                reply = await self._run(served, request)
            return reply
        except ServeError as exc:
            status = GRPC_STATUS[exc.kind].name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.request_done(name if name in self._known else UNKNOWN_MODEL, served_version, PROTOCOL,
                                           status, time.perf_counter() - started)

    async def _run(self, served: ServedVersion, request: RestInferRequest) -> RestReply:
        signature = served.signature
        if request.raw_input is not None:
            if len(signature.inputs) != 1:
                raise invalid(f"a raw binary request ({INFERENCE_HEADER}: 0) is for a model with one input; model "
                              f"{served.name!r} has {signature.input_names}")
            tensors = [raw_input_tensor(request.raw_input, signature.inputs[0])]
        else:
            tensors = request.inputs
        feed: dict[str, Any] = {}
        for tensor in tensors:
            feed[tensor.name] = ndarray_from_rest(tensor, unsent_input(signature, tensor.name, feed))
        deadline = None if request.timeout_us is None else time.monotonic() + request.timeout_us / 1e6
        result = await self.service.infer_async(served, feed, request.outputs, deadline)
        binary = [request.wants_binary(output) for output in result.outputs]
        body, header_length = infer_response_body(served.name, str(served.version), request.request_id,
                                                  result.outputs, binary)
        return RestReply(200, body, header_length)


def _check_method(method: str, expected: str, path: str) -> None:
    if method != expected:
        raise ServeError(ErrorKind.INVALID_INPUT, f"{path} takes {expected}, not {method}")


def _reply(status: int, payload: dict[str, Any]) -> RestReply:
    return RestReply(status, json.dumps(payload, separators=(",", ":")).encode())


def json_from_message(message: Any) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP API writes it: field names as in the .proto, 64-bit integers as JSON
    numbers (protobuf's JSON mapping writes them as strings), enums by name, fields at their defaults included."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    _numbers_for_int64(message.DESCRIPTOR, data)
    return data


def _numbers_for_int64(descriptor: Any, data: dict[str, Any]) -> None:
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for item_key, item in value.items():
                if value_field.message_type is not None:
                    _numbers_for_int64(value_field.message_type, item)
                elif value_field.type in _INT64_TYPES:
                    value[item_key] = int(item)
        elif field.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _numbers_for_int64(field.message_type, item)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)

"""Payload log records: one request and its response as two CloudEvents, and reading them back for a replay.

The events are the ones KServe's logger sends (`pkg/logger` in kserve/kserve): CloudEvents 1.0 whose types are
`org.kubeflow.serving.inference.request` and `org.kubeflow.serving.inference.response`, sharing one `id`, with the
`inferenceservicename`, `namespace`, `component` and `endpoint` extensions, and the payload as a KServe v2 (Open
Inference Protocol) JSON body: `{"id", "inputs": [{"name", "datatype", "shape", "data"}]}` and
`{"id", "model_name", "model_version", "outputs": [...]}`. kdeploy adds the extensions `modelversion`, `protocol`,
`signature` and `traceparent` (CloudEvents' distributed tracing extension), so a record leads to its trace.

Values replay exactly: the datatype and shape are kept, numbers are written as JSON numbers that read back to the
same bits (a float32 widened to a double prints as the shortest text that parses back to it; NaN and infinities as
Python's JSON writes them), strings as UTF-8 text or, when not text, as `{"b64": "..."}` (TF Serving's convention).

A file holds one structured-mode event per line (`application/cloudevents+json`); over HTTP each event is sent in
binary mode, as KServe's logger does: the attributes as `ce-*` headers, the v2 JSON as the body.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import DTYPES, STRING, ModelSignature, dtype_by_kserve

logger = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
CONTENT_TYPE = "application/json"
_KSERVE_OF = {d.numpy: d.kserve for d in DTYPES}


def tensor_json(name: str, array: np.ndarray) -> dict[str, Any]:
    """One tensor as KServe v2 JSON (data flattened in row-major order)."""
    array = np.asarray(array)
    datatype = _KSERVE_OF.get(array.dtype)
    if datatype is None:
        raise TypeError(f"tensor {name!r}: no KServe v2 datatype for {array.dtype}")
    if datatype == "BYTES":
        data: list[Any] = [_text_or_b64(value) for value in array.ravel()]
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _text_or_b64(value: Any) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def ndarray_from_tensor_json(tensor: Mapping[str, Any]) -> np.ndarray:
    """The array a `tensor_json` wrote: same dtype, shape and values.

    Raises:
        ValueError: for a datatype, shape or data that do not fit together.
    """
    dtype = dtype_by_kserve(tensor.get("datatype", ""))
    if dtype is None:
        raise ValueError(f"tensor {tensor.get('name')!r}: unknown datatype {tensor.get('datatype')!r}")
    shape = [int(d) for d in tensor["shape"]]
    data = tensor["data"]
    if dtype.name == STRING:
        flat = np.empty(len(data), dtype=object)
        flat[:] = [base64.b64decode(v["b64"]) if isinstance(v, dict) else str(v).encode("utf-8") for v in data]
        return flat.reshape(shape)
    return np.asarray(data, dtype=dtype.numpy).reshape(shape)


def time_text(time_ns: int) -> str:
    """A time in nanoseconds since the epoch as RFC 3339 UTC with microseconds (`...T12:00:00.000001Z`)."""
    return datetime.fromtimestamp(time_ns / 1e9, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EventContext:
    """What a pair of events says besides the tensors."""

    id: str
    source: str
    model: str
    version: int
    protocol: str
    signature: str
    trace_id: str = ""
    span_id: str = ""
    namespace: str = ""
    endpoint: str = ""
    """KServe's `endpoint` extension (default or canary there); empty when unset."""

    def attributes(self, kind: str, time_ns: int) -> dict[str, str]:
        attributes = {
            "specversion": SPEC_VERSION, "id": self.id, "source": self.source, "type": kind,
            "time": time_text(time_ns), "datacontenttype": CONTENT_TYPE,
            "inferenceservicename": self.model, "namespace": self.namespace, "component": "predictor",
            "endpoint": self.endpoint, "modelversion": str(self.version), "protocol": self.protocol,
            "signature": self.signature,
        }
        if self.trace_id:
            attributes["traceparent"] = f"00-{self.trace_id}-{self.span_id or '0' * 15 + '1'}-01"
        return attributes


def request_event(context: EventContext, feed: Mapping[str, np.ndarray], time_ns: int) -> dict[str, Any]:
    """The request as a structured-mode CloudEvent (a JSON object: attributes and `data`)."""
    data: dict[str, Any] = {"id": context.id, "inputs": [tensor_json(name, value) for name, value in feed.items()]}
    if context.signature:
        data["parameters"] = {"signature_name": context.signature}
    return {**context.attributes(REQUEST_TYPE, time_ns), "data": data}


def response_event(context: EventContext, outputs: Mapping[str, np.ndarray], time_ns: int) -> dict[str, Any]:
    """The response as a structured-mode CloudEvent."""
    data = {"id": context.id, "model_name": context.model, "model_version": str(context.version),
            "outputs": [tensor_json(name, value) for name, value in outputs.items()]}
    return {**context.attributes(RESPONSE_TYPE, time_ns), "data": data}


def event_line(event: Mapping[str, Any]) -> str:
    """One event as a line of a payload log file."""
    return json.dumps(event, separators=(",", ":")) + "\n"


def binary_http(event: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """One event in CloudEvents' HTTP binary mode: `ce-*` headers (empty attributes left out) and the JSON body."""
    headers = {"Content-Type": event.get("datacontenttype", CONTENT_TYPE)}
    for key, value in event.items():
        if key not in ("data", "datacontenttype") and value != "":
            headers[f"ce-{key}"] = str(value)
    return headers, json.dumps(event["data"], separators=(",", ":")).encode("utf-8")


@dataclass
class LoggedRequest:
    """One logged request and, when its response was logged too, the answer it got."""

    id: str
    model: str
    version: int
    protocol: str
    signature: str
    trace_id: str
    time: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray] | None = None


def payload_log_files(path: Path) -> list[Path]:
    """The files of a payload log, oldest first: the file's rotated copies (`FILE.2`, `FILE.1`) then the file
    itself, or every such group in a folder (one per worker)."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and ".jsonl" in p.name]
    else:
        siblings = list(path.parent.glob(glob.escape(path.name) + ".*")) if path.parent.is_dir() else []
        files = ([path] if path.is_file() else []) + [p for p in siblings if p.suffix[1:].isdigit()]

    def age(file: Path) -> tuple[str, int]:
        rotated = file.suffix[1:].isdigit()
        return (file.stem if rotated else file.name), -int(file.suffix[1:]) if rotated else 0

    return sorted(files, key=age)


def is_payload_log(path: Path) -> bool:
    """Whether `--data PATH` names a payload log (a folder, or a file that is not an .npz)."""
    path = Path(path)
    return path.is_dir() or (path.suffix != ".npz" and bool(payload_log_files(path)))


def _events(files: list[Path]) -> Iterator[dict[str, Any]]:
    for file in files:
        with open(file, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: the rest of the log is still good
                    logger.warning("%s:%d is not a JSON event; skipped", file, number)
                    continue
                if isinstance(event, dict) and event.get("type") in (REQUEST_TYPE, RESPONSE_TYPE):
                    yield event


def read_payload_log(path: Path, model: str | None = None) -> list[LoggedRequest]:
    """Every logged request (of `model`, when given) with its response, oldest first.

    Raises:
        UsageError: when the path holds no payload log, or no request of the model.
    """
    files = payload_log_files(path)
    if not files:
        raise UsageError(f"payload log not found: {path}")
    requests: dict[str, LoggedRequest] = {}
    responses: dict[str, dict[str, np.ndarray]] = {}
    try:
        for event in _events(files):
            if model is not None and event.get("inferenceservicename") != model:
                continue
            data = event["data"]
            if event["type"] == RESPONSE_TYPE:
                responses[event["id"]] = {t["name"]: ndarray_from_tensor_json(t) for t in data["outputs"]}
                continue
            traceparent = event.get("traceparent", "")
            requests[event["id"]] = LoggedRequest(
                id=event["id"], model=event.get("inferenceservicename", ""),
                version=int(event.get("modelversion") or 0), protocol=event.get("protocol", ""),
                signature=event.get("signature", ""), trace_id=traceparent[3:35] if traceparent else "",
                time=event.get("time", ""), inputs={t["name"]: ndarray_from_tensor_json(t) for t in data["inputs"]})
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path} is not a kdeploy payload log: {exc}") from None
    if not requests:
        which = f" of model {model!r}" if model is not None else ""
        raise UsageError(f"no logged request{which} in {path} ({len(files)} file(s))")
    for request_id, outputs in responses.items():
        if request_id in requests:
            requests[request_id].outputs = outputs
    return sorted(requests.values(), key=lambda r: r.time)  # stable: same-microsecond records keep file order


def replay_rows(records: list[LoggedRequest], signature: ModelSignature) -> list[LoggedRequest]:
    """The records a replay can send through `signature`: those of its signature whose inputs it takes, in
    order, all with the same non-batch shapes (so their rows stack into one feed).

    Raises:
        UsageError: when none fit, naming why.
    """
    default = ("", "serving_default", signature.name)
    usable = [r for r in records if r.signature in default and set(r.inputs) == set(signature.input_names)]
    if not usable:
        raise UsageError(f"none of the {len(records)} logged requests is for signature {signature.name!r} with "
                         f"inputs {signature.input_names}")
    first = {name: value.shape[1:] for name, value in usable[0].inputs.items()}
    same = [r for r in usable if {n: v.shape[1:] for n, v in r.inputs.items()} == first]
    if len(same) < len(usable):
        logger.warning("%d logged requests have other non-batch shapes than the first; replaying the %d that match",
                       len(usable) - len(same), len(same))
    return same


def stacked_inputs(records: list[LoggedRequest]) -> dict[str, np.ndarray]:
    """The rows of every record, in order, as one feed."""
    names = list(records[0].inputs)
    return {name: np.concatenate([r.inputs[name] for r in records], axis=0) for name in names}


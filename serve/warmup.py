"""TF Serving's warm-up records: `VERSION/assets.extra/tf_serving_warmup_requests`, replayed before a version is
AVAILABLE, as TF Serving replays them (`servables/tensorflow/saved_model_warmup.cc`).

The file is a TFRecord of `PredictionLog`s (read without TensorFlow: `kdeploy.wire.tfrecord`); each record's request
(Predict, Classify, Regress or MultiInference) runs once on the version being loaded, whatever model name it
carries. A record that does not parse, a SessionRun or streamed record, or a request the model refuses fails the
load, with the record's number and the reason, as in TF Serving; more than 1000 records are refused too. kdeploy
replays the file for every backend (a kdeploy export keeps it beside all its formats), and `kdeploy export` writes
one from the validation rows, so TF Serving warms kdeploy's SavedModels up the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.errors import KdeployError
from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import ModelSignature, SignatureError
from kdeploy.runtimes.base import Backend, infer_signature
from kdeploy.wire.errors import ServeError
from kdeploy.wire.examples import examples_from_input
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import ndarray_from_tensor_proto
from kdeploy.wire.tfrecord import TFRecordError, read_records
from kdeploy.wire.warmup_records import MAX_RECORDS, WARMUP_FILE

__all__ = ["MAX_RECORDS", "WARMUP_FILE", "WarmupError", "WarmupReplay", "replay_warmup", "warmup_file"]


class WarmupError(KdeployError):
    """A warm-up record that cannot be replayed: the version does not load."""


@dataclass(frozen=True)
class WarmupReplay:
    """What a replay did."""

    records: int
    """Records replayed."""
    fastest_seconds: float
    """The quickest run among them (the server's inline-or-thread decision uses it)."""


def warmup_file(version_dir: Path) -> Path | None:
    """The version's warm-up file, or None when it has none."""
    path = Path(version_dir) / WARMUP_FILE
    return path if path.is_file() else None


def replay_warmup(path: Path, backend: Backend, manifest: Manifest, *, check_shapes: bool) -> WarmupReplay:
    """Run every record of a warm-up file on a loaded backend.

    Args:
        path: the warm-up file.
        backend: the version's runtime.
        manifest: its manifest (which names its signatures).
        check_shapes: whether inputs must match the signature's shapes (as the version's requests must).

    Raises:
        WarmupError: naming the record and why it failed.
    """
    log_class = load_protos().cls("tensorflow.serving.PredictionLog")
    fastest, count = float("inf"), 0
    try:
        for index, record in enumerate(read_records(path, MAX_RECORDS)):
            try:
                log = log_class.FromString(record)
            except Exception:  # protobuf's DecodeError, or worse on garbage
                raise WarmupError(f"Failed to parse warmup record {index} from {path}") from None
            try:
                for signature, feed in _runs(log, manifest):
                    checked = signature.validate_feed(feed, check_shapes=check_shapes)
                    started = time.perf_counter()
                    infer_signature(backend, signature, checked)
                    fastest = min(fastest, time.perf_counter() - started)
            except (ServeError, SignatureError, KdeployError) as exc:
                raise WarmupError(f"warm-up record {index} of {path} failed: {exc}") from None
            count += 1
    except TFRecordError as exc:
        raise WarmupError(f"warm-up file {exc}") from None
    except OSError as exc:
        raise WarmupError(f"cannot read the warm-up file {path}: {exc}") from None
    return WarmupReplay(count, fastest)


def _runs(log: Any, manifest: Manifest) -> list[tuple[ModelSignature, dict]]:
    """The (signature, feed) runs of one PredictionLog; none for a record without a request type."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        signature = manifest.signature_named(request.model_spec.signature_name)
        feed = {name: ndarray_from_tensor_proto(name, proto, signature.input(name))
                for name, proto in request.inputs.items()}
        for name in request.output_filter:
            signature.output(name)
        return [(signature, feed)]
    if kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        return [_examples_run(manifest, request.model_spec.signature_name, examples_from_input(request.input))]
    if kind == "multi_inference_log":
        request = log.multi_inference_log.request
        examples = examples_from_input(request.input)
        return [_examples_run(manifest, task.model_spec.signature_name, examples) for task in request.tasks]
    if kind in ("session_run_log", "predict_streamed_log"):
        raise WarmupError(f"Unsupported log_type for warmup: {kind}")
    return []


def _examples_run(manifest: Manifest, name: str, examples: np.ndarray) -> tuple[ModelSignature, dict]:
    signature = manifest.signature_named(name)
    if len(signature.inputs) != 1:
        raise SignatureError(f"signature {signature.name!r} takes {signature.input_names}, not one input of "
                             "serialized tf.Examples")
    return signature, {signature.input_names[0]: examples}

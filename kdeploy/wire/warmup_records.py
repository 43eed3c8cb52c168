"""TF Serving's warm-up file: where it sits in a SavedModel, and its records (`PredictionLog`s) for Predict.

`kdeploy export` writes one from the validation rows, so TF Serving (and `kdeploy serve`, which replays it for any
backend: see `kdeploy.serve.warmup`) warms a version up on real inputs before it is AVAILABLE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kdeploy.contract.signature import ModelSignature
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import fill_tensor_proto
from kdeploy.wire.tfrecord import write_records

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
"""Where TF Serving looks for warm-up records in a SavedModel folder (`assets.extra`, which it never loads as an
asset), and kdeploy in any version folder."""
MAX_RECORDS = 1000
"""TF Serving's limit on warm-up records (WarmupConsts::kMaxNumRecords)."""


def predict_log_records(model: str, signature: ModelSignature, feeds: Sequence[Mapping[str, np.ndarray]]
                        ) -> list[bytes]:
    """One serialized `PredictionLog` (a PredictLog with its PredictRequest) per feed, values as `tensor_content`."""
    log_class = load_protos().cls("tensorflow.serving.PredictionLog")
    records = []
    for feed in feeds:
        log = log_class()
        request = log.predict_log.request
        request.model_spec.name = model
        request.model_spec.signature_name = signature.name
        for name in signature.input_names:
            fill_tensor_proto(request.inputs[name], np.asarray(feed[name]), "content")
        records.append(log.SerializeToString())
    return records


def write_predict_warmup(version_dir: Path, model: str, signature: ModelSignature,
                         feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write `VERSION/assets.extra/tf_serving_warmup_requests` with one Predict record per feed; returns its path."""
    return write_records(Path(version_dir) / WARMUP_FILE, predict_log_records(model, signature, feeds))

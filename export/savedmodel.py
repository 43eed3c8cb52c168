"""A SavedModel folder as the source of an export: its signatures, read from `saved_model.pb`, and its files.

The signature comes from the SignatureDef itself (the proto, not a loaded model): its input and output keys are
the names every format keeps (TF Serving, the TFLite signature runner and tf2onnx's graph all use them), its
dtypes and shapes are the manifest's, and its `method_name` says whether it predicts, classifies or regresses.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import SAVEDMODEL_FILES
from kdeploy.contract.signature import ModelSignature, SignatureError
from kdeploy.runtimes.savedmodel_signatures import signature_defs, signature_of_def

logger = logging.getLogger(__name__)

def signature_from_savedmodel(savedmodel_dir: Path, name: str) -> ModelSignature:
    """One signature of a SavedModel as the manifest's `ModelSignature` (dynamic dimensions as None).

    Raises:
        UsageError: for an unknown signature name (listing the ones there are), and for a tensor kdeploy cannot
            describe: sparse or ragged, unknown rank, no leading batch dimension, an unsupported dtype.
    """
    try:
        defs = signature_defs(savedmodel_dir)
    except SignatureError as exc:
        raise UsageError(str(exc)) from None
    if name not in defs:
        if not defs:
            raise UsageError(f"{savedmodel_dir} has no signatures: save it with tf.saved_model.save(obj, DIR, "
                             "signatures=...) or keras' model.export(DIR)")
        raise UsageError(f"unknown signature {name!r} in {savedmodel_dir}; it has {sorted(defs)} "
                         "(choose one with --signature NAME)")
    try:
        return signature_of_def(name, defs[name])
    except SignatureError as exc:
        raise UsageError(f"signature {name!r} of {savedmodel_dir}: {exc}") from None


def copy_savedmodel(source: Path, target: Path) -> None:
    """Copy a SavedModel's own files (saved_model.pb, variables/, assets/, fingerprint.pb) and its TF Serving
    extras (`assets.extra/`: warm-up requests) into `target`, where TF Serving reads them; anything else in the
    source folder (a manifest, other formats) stays behind."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (*SAVEDMODEL_FILES, "assets.extra"):
        path = Path(source) / name
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            shutil.copy2(path, target / name)

"""The TF Serving warm-up file `kdeploy export` writes into each version: Predict requests on the validation rows.

TF Serving replays `assets.extra/tf_serving_warmup_requests` before it makes a SavedModel AVAILABLE, so the first
user request does not pay for the runtime's lazy set-up; `kdeploy serve` replays it for every backend. The records
are the version's default signature on its first validation rows (or on inputs generated from the signature when
the source came without validation data), one request of each of a few batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import load_data_file, slice_feed
from kdeploy.wire.warmup_records import WARMUP_FILE, write_predict_warmup

WARMUP_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
"""Rows of the warm-up requests (capped at the validation rows there are): one per size, as a batching server
sees several."""


def write_warmup_requests(version_dir: Path, manifest: Manifest) -> Path | None:
    """Write the version's warm-up file, unless the folder already has one (a SavedModel source keeps its own).

    Returns:
        The file written, or None when there was one already, or no input to build (a string input without
        known values, which generated rows cannot fill).
    """
    version_dir = Path(version_dir)
    if (version_dir / WARMUP_FILE).exists():
        return None
    signature = manifest.signature
    if manifest.validation_data and (version_dir / manifest.validation_data).is_file():
        rows, _ = load_data_file(version_dir / manifest.validation_data, signature)
    elif any(spec.is_string and not spec.examples for spec in signature.inputs):
        return None
    else:
        rows = signature.generate_feed(max(WARMUP_BATCH_SIZES), np.random.default_rng(0))
    available = len(next(iter(rows.values()))) if rows else 0
    sizes = sorted({min(size, available) for size in WARMUP_BATCH_SIZES if available})
    if not sizes:
        return None
    return write_predict_warmup(version_dir, manifest.name, signature, [slice_feed(rows, 0, n) for n in sizes])

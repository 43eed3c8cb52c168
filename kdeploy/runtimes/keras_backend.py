"""Keras backend: the source model, the reference every exported format is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.contract.signature import Feed, ModelSignature
from kdeploy.runtimes.keras_model import load_keras_model, model_input, outputs_as_dict


class KerasBackend:
    """A `.keras` model called directly (not `predict`, which adds callbacks and batching of its own)."""

    format = "keras"

    def __init__(self, path: Path, signature: ModelSignature, *, unsafe: bool = False) -> None:
        self._model = load_keras_model(path, unsafe=unsafe)
        self._signature = signature

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        outputs = outputs_as_dict(self._model, self._model(model_input(self._model, feed), training=False))
        return {name: np.asarray(outputs[name]) for name in self._signature.output_names}

    def close(self) -> None:
        self._model = None

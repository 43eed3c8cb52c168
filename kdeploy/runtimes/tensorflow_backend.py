"""SavedModel backend through TensorFlow (`tf.saved_model.load`, signature `serving_default`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from kdeploy.contract.signature import Feed, ModelSignature


class TensorFlowBackend:
    """A SavedModel's serving signature, called with the signature's input names."""

    format = "savedmodel"

    def __init__(self, path: Path, signature: ModelSignature) -> None:
        # `path` names saved_model.pb; TensorFlow loads the folder that holds it.
        self._loaded = tf.saved_model.load(str(Path(path).parent))
        self._function = self._loaded.signatures[signature.name]
        self._signature = signature

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        outputs = self._function(**{name: tf.convert_to_tensor(value) for name, value in feed.items()})
        return {name: outputs[name].numpy() for name in self._signature.output_names}

    def close(self) -> None:
        self._function = None
        self._loaded = None

"""SavedModel backend through TensorFlow (`tf.saved_model.load`): the manifest's signature, or every signature the
SavedModel declares when kdeploy did not export it (TF Serving's base paths, `tf.saved_model.save`, TF1 code)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdeploy.contract.signature import Feed, ModelSignature, SignatureError
from kdeploy.runtimes.savedmodel_signatures import read_signatures

logger = logging.getLogger(__name__)

class TensorFlowBackend:
    """A SavedModel's signatures, called with the signature's input names."""

    format = "savedmodel"

    def __init__(self, path: Path, signature: ModelSignature | None) -> None:
        # `path` names saved_model.pb; TensorFlow loads the folder that holds it.
        folder = Path(path).parent
        if signature is not None:
            self.signatures: tuple[ModelSignature, ...] = (signature,)
        else:
            self.signatures, skipped = read_signatures(folder)
            for reason in skipped:
                logger.warning("signature %s is not served", reason)
        self._loaded = tf.saved_model.load(str(folder))
        self._functions = {s.name: self._loaded.signatures[s.name] for s in self.signatures}
        self._signature = self.signatures[0]

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        return self.infer_signature(self._signature, feed)

    def infer_signature(self, signature: ModelSignature, feed: Feed) -> dict[str, np.ndarray]:
        """Run one of the SavedModel's signatures.

        Raises:
            SignatureError: when TensorFlow refuses the values (InvalidArgumentError: an Example it cannot parse, a
                shape the graph cannot take), with TensorFlow's first line, as TF Serving answers INVALID_ARGUMENT.
        """
        try:
            outputs = self._functions[signature.name](**{name: tf.convert_to_tensor(v) for name, v in feed.items()})
        except tf.errors.InvalidArgumentError as exc:
            text = (exc.message or str(exc)).strip()
            raise SignatureError(f"TensorFlow refused the input: {text.splitlines()[0] if text else exc}") from None
        return {name: outputs[name].numpy() for name in signature.output_names}

    def close(self) -> None:
        self._functions = {}
        self._loaded = None

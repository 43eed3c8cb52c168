"""SavedModel backend through TensorFlow (`tf.saved_model.load`): the manifest's signature, or every signature the
SavedModel declares when kdeploy did not export it (TF Serving's base paths, `tf.saved_model.save`, TF1 code)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from kdeploy.contract.signature import (
    DEFAULT_SIGNATURE,
    METHOD_PREFIX,
    METHODS,
    Feed,
    ModelSignature,
    SignatureError,
    TensorSpec,
    dtype_by_tf_enum,
)

logger = logging.getLogger(__name__)

SERVE_TAG = "serve"


class TensorFlowBackend:
    """A SavedModel's signatures, called with the signature's input names."""

    format = "savedmodel"

    def __init__(self, path: Path, signature: ModelSignature | None) -> None:
        # `path` names saved_model.pb; TensorFlow loads the folder that holds it.
        folder = Path(path).parent
        self.signatures = (signature,) if signature is not None else read_signatures(folder)
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


def read_signatures(folder: Path) -> tuple[ModelSignature, ...]:
    """The signatures in a SavedModel's `serve` graph, `serving_default` first, as its SignatureDefs declare them.

    A signature kdeploy cannot describe (a scalar tensor, a resource dtype) is left out with a warning.

    Raises:
        SignatureError: when the file cannot be read or no signature is left.
    """
    path = Path(folder) / "saved_model.pb"
    try:
        saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, ValueError) as exc:  # protobuf's DecodeError is a ValueError
        raise SignatureError(f"cannot read {path}: {exc}") from None
    graphs = [g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags] or list(saved.meta_graphs)
    if not graphs:
        raise SignatureError(f"{path} holds no MetaGraph")
    found, skipped = [], []
    for key, definition in sorted(graphs[0].signature_def.items(), key=lambda kv: (kv[0] != DEFAULT_SIGNATURE, kv[0])):
        if key.startswith("__"):  # __saved_model_init_op and other internal entries
            continue
        try:
            found.append(_signature(key, definition))
        except SignatureError as exc:
            skipped.append(f"{key}: {exc}")
    for reason in skipped:
        logger.warning("signature %s is not served", reason)
    if not found:
        raise SignatureError(f"{path} has no signature kdeploy can serve ({'; '.join(skipped) or 'none declared'})")
    return tuple(found)


def _signature(key: str, definition: object) -> ModelSignature:
    method = str(getattr(definition, "method_name", "")).removeprefix(METHOD_PREFIX)
    return ModelSignature(
        inputs=tuple(_spec(n, info) for n, info in sorted(definition.inputs.items())),  # type: ignore[attr-defined]
        outputs=tuple(_spec(n, info) for n, info in sorted(definition.outputs.items())),  # type: ignore[attr-defined]
        name=key,
        method=method if method in METHODS else "predict",
    )


def _spec(name: str, info: object) -> TensorSpec:
    dtype = dtype_by_tf_enum(int(info.dtype)).name  # type: ignore[attr-defined]
    shape = info.tensor_shape  # type: ignore[attr-defined]
    if shape.unknown_rank:
        # TF1 placeholders often leave the rank open (a batch of serialized tf.Example strings): any shape with a
        # leading batch dimension goes, and TensorFlow checks the rest.
        return TensorSpec(name, dtype, (None,), any_shape=True)
    if not shape.dim:
        raise SignatureError(f"tensor {name!r} is a scalar: kdeploy serves tensors with a leading batch dimension")
    return TensorSpec(name, dtype, tuple(None if d.size < 0 else int(d.size) for d in shape.dim))

"""Loading legacy .h5 models, reading a Keras model's signature and preparing it for the converters (imports Keras)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import STRING, ModelSignature, SignatureError, TensorSpec, dtype_by_name
from kdeploy.runtimes.keras_model import model_input, output_names_of, outputs_as_dict

logger = logging.getLogger(__name__)


def load_legacy_h5(path: Path, unsafe: bool = False) -> keras.Model:
    """Load a legacy HDF5 model (Keras 2 / tf.keras, or Keras 3's `model.save("x.h5")`) with Keras 3, in safe mode
    unless `unsafe`, the way `.keras` files are loaded.

    Raises:
        UsageError: one line saying why, for a file that is not HDF5, holds weights only, needs a Lambda layer's
            Python code (without `unsafe`) or a custom class Keras does not know.
    """
    path = Path(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # h5py's OSError, Keras' ValueError, TypeError, KeyError... each with the reason
        message = " ".join(str(exc).split())
        if "safe_mode" in message or "unsafe" in message.lower():
            raise UsageError(
                f"{path} contains a Lambda layer (arbitrary Python code) that Keras' safe mode refuses to load; "
                "pass --unsafe only if you trust the file"
            ) from None
        if message.startswith("Unknown "):
            # "Unknown layer: 'my>Twice'. Please ensure you are using a `keras.utils.custom_object_scope`..."
            unknown = message.split(". ", 1)[0]
            raise UsageError(f"{path} uses a custom object Keras does not know ({unknown}); kdeploy loads built-in "
                             "Keras layers only: re-save the model without custom layers") from None
        reason = message or type(exc).__name__
        raise UsageError(f"{path} is not a loadable legacy Keras (.h5) model: {reason[:300]}") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return _inputs_by_name(model)


def _inputs_by_name(model: keras.Model) -> keras.Model:
    """The same model (same layers and weights) taking its inputs as kdeploy passes them: one tensor, or a dict.

    A Keras 2 functional model keeps its inputs in a list (`input_layers: [[...]]`), and Keras 3 warns at every
    call that passes anything else.
    """
    if isinstance(model, keras.Sequential) or not isinstance(model.input, list):
        return model
    inputs = model.inputs[0] if len(model.inputs) == 1 else {t.name: t for t in model.inputs}
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return keras.Model(inputs, outputs, name=model.name)


def ensure_built(model: keras.Model) -> None:
    """Call a never-run model once on one row of zeros: Keras' exporters refuse models that were never called."""
    if getattr(model, "_called", False):
        return
    feed = {t.name: np.zeros((1, *(d or 1 for d in t.shape[1:])), dtype=dtype_by_name(dtype_name(t.dtype)).numpy)
            for t in model.inputs}
    for values in feed.values():
        if values.dtype == object:
            values.fill(b"")  # NumPy has no string zeros: empty strings (an out-of-vocabulary token)
    model(feed if len(feed) > 1 else next(iter(feed.values())), training=False)


def signature_from_keras(model: keras.Model, name: str = "serving_default") -> ModelSignature:
    """The model's signature: its own input and output names, dtypes and shapes.

    Integer inputs consumed by an Embedding get the vocabulary as their value range, so generated inputs
    (for parity checks and load tests) stay valid.
    """
    if not model.inputs:
        raise UsageError("the model has no defined inputs; build it with keras.Input before saving")
    ranges = _embedding_ranges(model)
    examples = _string_examples(model)
    inputs = tuple(
        TensorSpec(t.name, dtype_name(t.dtype), tuple(t.shape), ranges.get(t.name), examples.get(t.name))
        for t in model.inputs
    )
    outputs = tuple(TensorSpec(n, dtype_name(t.dtype), tuple(t.shape))
                    for n, t in zip(output_names_of(model), _flat_outputs(model)))
    if len({t.name for t in outputs}) != len(outputs):
        raise SignatureError(f"the model's outputs do not have distinct names: {[t.name for t in outputs]}")
    return ModelSignature(inputs=inputs, outputs=outputs, name=name)


def dtype_name(dtype: Any) -> str:
    """The manifest's dtype name of a Keras tensor's dtype (`string` for tf.string, which NumPy lacks)."""
    return STRING if str(dtype) == STRING else np.dtype(dtype).name


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """For each model input name, the layers that take it directly."""
    input_names = {id(t): t.name for t in model.inputs}
    found: dict[str, list[keras.layers.Layer]] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                if id(tensor) in input_names:
                    found.setdefault(input_names[id(tensor)], []).append(layer)
    if isinstance(model, keras.Sequential) and model.layers and model.inputs:
        found.setdefault(model.inputs[0].name, []).append(model.layers[0])
    return found


def _string_examples(model: keras.Model, limit: int = 64) -> dict[str, tuple[str, ...]]:
    """Valid values of string inputs read by a StringLookup (its vocabulary) or a TextVectorization (short
    phrases of its vocabulary), so generated inputs hit the vocabulary as well as miss it."""
    examples: dict[str, tuple[str, ...]] = {}
    for name, layers in _consumers(model).items():
        for layer in layers:
            if isinstance(layer, (keras.layers.StringLookup, keras.layers.TextVectorization)):
                words = [w for w in layer.get_vocabulary() if w and not w.startswith("[")][:limit]
                if isinstance(layer, keras.layers.TextVectorization):
                    words = [" ".join(words[i:i + 3]) for i in range(0, len(words), 2)] or words
                if words:
                    examples[name] = tuple(words)
    return examples


def _flat_outputs(model: keras.Model) -> list[Any]:
    outputs = model.outputs
    return list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)


def _embedding_ranges(model: keras.Model) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    input_names = {id(t): t.name for t in model.inputs}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                if id(tensor) in input_names:
                    ranges[input_names[id(tensor)]] = (0.0, float(layer.input_dim - 1))
    if isinstance(model, keras.Sequential) and model.layers and isinstance(model.layers[0], keras.layers.Embedding):
        ranges[model.inputs[0].name] = (0.0, float(model.layers[0].input_dim - 1))
    return ranges


def serving_function(model: keras.Model) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A function from a feed to a dict of outputs: the body of the exported `serving_default` signature."""

    def serve(inputs: Mapping[str, Any]) -> dict[str, Any]:
        return outputs_as_dict(model, model(model_input(model, inputs), training=False))

    return serve


def has_recurrent_layers(model: keras.Model) -> bool:
    """Whether the model contains RNN layers (LSTM, GRU, inside Bidirectional too) that are not unrolled."""
    # _flatten_layers is the only walker that reaches layers nested in wrappers such as Bidirectional.
    layers = model._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001
    return any(isinstance(layer, keras.layers.RNN) and not layer.unroll for layer in layers)


def unrolled_clone(model: keras.Model) -> keras.Model:
    """A copy of the model with every RNN layer unrolled (same weights, same results).

    TFLite cannot lower an RNN's while loop when the batch is dynamic; an unrolled RNN is plain matrix
    arithmetic, which it converts. Needs a static time dimension.
    """

    def unroll(config: Any) -> Any:
        if isinstance(config, dict):
            return {k: (True if k == "unroll" else unroll(v)) for k, v in config.items()}
        if isinstance(config, list):
            return [unroll(v) for v in config]
        return config

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config(unroll(layer.get_config()))

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy

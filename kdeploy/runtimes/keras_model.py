"""Loading a user's Keras model and calling it with a feed (imports Keras)."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from kdeploy.common.errors import UsageError


def load_keras_model(path: Path, *, unsafe: bool = False) -> keras.Model:
    """Load a `.keras` file with Keras' safe mode on, unless `unsafe`.

    Raises:
        UsageError: when the file is missing, is not a Keras model, or needs unsafe deserialisation.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model file not found: {path}")
    if path.is_dir() or not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a Keras model: expected a .keras file written by model.save()")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError... for foreign or broken files
        message = str(exc)
        if "safe_mode" in message or "unsafe" in message.lower():
            raise UsageError(
                f"{path} contains a Lambda layer (arbitrary Python code) that Keras' safe mode refuses to load; "
                "pass --unsafe only if you trust the file"
            ) from None
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise UsageError(f"{path} is not a loadable Keras model: {first_line}") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return model


def output_names_of(model: keras.Model) -> list[str]:
    """The model's output names; a Sequential has none of its own, so its last layer names its one output."""
    names = getattr(model, "output_names", None)
    return list(names) if names else [model.layers[-1].name]


def outputs_as_dict(model: keras.Model, result: Any) -> dict[str, Any]:
    """A model call's result (a tensor, a list or a dict) keyed by the model's output names."""
    if isinstance(result, Mapping):
        return dict(result)
    if not isinstance(result, (list, tuple)):
        result = [result]
    return dict(zip(output_names_of(model), result))


def model_input(model: keras.Model, feed: Mapping[str, Any]) -> Any:
    """What to pass to `model(...)` for a feed: the tensor itself for one input, a dict otherwise."""
    if len(model.inputs) == 1:
        return feed[model.inputs[0].name]
    return dict(feed)

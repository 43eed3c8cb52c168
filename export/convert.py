"""Converters from a Keras model to SavedModel, TFLite and ONNX (imports TensorFlow)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdeploy.contract.manifest import TFLITE_QUANTIZATIONS
from kdeploy.contract.signature import ModelSignature, slice_feed
from kdeploy.export.keras_model import has_recurrent_layers, serving_function, unrolled_clone

logger = logging.getLogger(__name__)


class ConversionError(Exception):
    """A format could not be produced; the message is the converter's reason."""


def savedmodel_from_keras(model: keras.Model, signature: ModelSignature, out_dir: Path) -> None:
    """Write a SavedModel whose `serving_default` takes and returns the model's own tensor names."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    input_signature = {
        spec.name: tf.TensorSpec(spec.shape, spec.dtype, name=spec.name) for spec in signature.inputs
    }
    archive.add_endpoint(signature.name, serving_function(model), input_signature=[input_signature])
    try:
        archive.write_out(str(out_dir), verbose=False)
    except Exception as exc:  # TensorFlow raises many types for untraceable models
        raise ConversionError(_first_line(exc)) from exc


def tflite_from_keras(
    model: keras.Model,
    signature: ModelSignature,
    savedmodel_dir: Path,
    out_path: Path,
    quantization: str = "none",
    representative_feed: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Convert to TFLite from the SavedModel, with the chosen quantisation.

    Models with recurrent layers are converted from an unrolled copy (same weights): TFLite cannot lower an
    RNN loop whose batch is dynamic. Inputs and outputs stay float even with int8 weights, so the same feed
    works for every format.

    Raises:
        ConversionError: with the converter's reason.
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"unknown TFLite quantization {quantization!r}")
    with tempfile.TemporaryDirectory(prefix="kdeploy-tflite-") as tmp:
        source = Path(savedmodel_dir)
        if has_recurrent_layers(model):
            if any(d is None for spec in signature.inputs for d in spec.shape[1:]):
                raise ConversionError(
                    "TFLite cannot convert recurrent layers when an input has a dynamic dimension other than "
                    "the batch; give the sequence a fixed length (keras.Input(shape=(LENGTH,)))"
                )
            source = Path(tmp) / "unrolled"
            savedmodel_from_keras(unrolled_clone(model), signature, source)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source), signature_keys=[signature.name])
        if quantization == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "int8":
            if representative_feed is None:
                raise ConversionError("int8 quantization needs representative data (--representative-data FILE.npz)")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: _representative_rows(representative_feed)
        try:
            out_path.write_bytes(converter.convert())
        except Exception as exc:  # the converter raises ConverterError and others, all with a reason
            raise ConversionError(_converter_reason(exc)) from exc


def _representative_rows(feed: Mapping[str, np.ndarray], limit: int = 200) -> Iterator[dict[str, np.ndarray]]:
    rows = min(limit, next(iter(feed.values())).shape[0])
    for i in range(rows):
        yield slice_feed(feed, i, i + 1)


def onnx_from_savedmodel(savedmodel_dir: Path, out_path: Path, opset: int, signature_name: str) -> None:
    """Convert a SavedModel's signature to ONNX with tf2onnx, keeping the signature's tensor names.

    tf2onnx runs in a child process: `tf2onnx.convert.from_keras` fails on Keras 3 models, while its
    SavedModel route works and names the graph's inputs and outputs after the signature keys.

    Raises:
        ConversionError: with tf2onnx's reason.
    """
    command = [
        sys.executable, "-m", "tf2onnx.convert",
        "--saved-model", str(savedmodel_dir),
        "--signature_def", signature_name,
        "--tag", "serve",
        "--opset", str(opset),
        "--output", str(out_path),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not out_path.exists():
        raise ConversionError(_tf2onnx_reason(proc.stderr))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _converter_reason(exc: BaseException) -> str:
    """The lines of a TFLite converter error that say what failed (it also prints MLIR locations)."""
    lines = [line for line in str(exc).splitlines() if "error:" in line]
    reasons = [line.split("error:", 1)[1].strip() for line in lines]
    unique = list(dict.fromkeys(reasons))
    return "; ".join(unique[:3]) if unique else _first_line(exc)


def _tf2onnx_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or "Error" in line or "error" in line]
    return (errors[-1] if errors else (lines[-1] if lines else "tf2onnx failed without a message"))[:500]

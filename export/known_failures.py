"""Layer-by-format pairs known not to convert (or not to keep parity), refused before any conversion runs.

Filled from the coverage sweep (`make coverage`, docs/coverage.md): each entry is a layer class (or
`activation:NAME` for any layer computing that activation) and the matrix columns it fails in, with the reason
the user gets from `kdeploy export`. A column is a format, or `tflite-QUANTIZATION` for a quantised TFLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KnownFailure:
    """One layer that fails in some columns of the matrix, and why."""

    layer: str
    """Keras class name as `type(layer).__name__` spells it (`GroupedQueryAttention` for
    keras.layers.GroupQueryAttention), or `activation:NAME`."""
    columns: tuple[str, ...]
    """`savedmodel`, `onnx`, `tflite` (fp32), `tflite-fp16`, `tflite-dynamic-int8`, `tflite-int8`."""
    reason: str


_TFLITE = ("tflite", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8")
_NO_FLEX = ("; it would need TensorFlow ops inside TFLite (SELECT_TF_OPS), which the LiteRT runtime kdeploy serves "
            "with does not include")

KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure("AveragePooling3D", _TFLITE, "TFLite has no 3-D pooling op (tf.AvgPool3D)" + _NO_FLEX),
    KnownFailure("MaxPooling3D", _TFLITE, "TFLite has no 3-D pooling op (tf.MaxPool3D)" + _NO_FLEX),
    KnownFailure("AdaptiveAveragePooling3D", _TFLITE, "TFLite has no 3-D pooling op (tf.AvgPool3D)" + _NO_FLEX),
    KnownFailure("AdaptiveMaxPooling3D", _TFLITE, "TFLite has no 3-D pooling op (tf.MaxPool3D)" + _NO_FLEX),
    KnownFailure("CategoryEncoding", _TFLITE, "TFLite has no tf.DenseBincount op" + _NO_FLEX),
    KnownFailure("Hashing", _TFLITE, "TFLite has no tf.AsString / string hashing ops" + _NO_FLEX),
    KnownFailure("HashedCrossing", _TFLITE, "TFLite has no tf.SparseCross op" + _NO_FLEX),
    KnownFailure("IntegerLookup", _TFLITE, "TFLite's hashtable ops take string keys only, not the int64 keys of "
                                           "tf.HashTableV2 here" + _NO_FLEX),
    KnownFailure("IntegerLookup", ("onnx",), "tf2onnx converts only string<->int64 lookup tables, not the "
                                             "int64->int64 table IntegerLookup uses"),
    KnownFailure("TextVectorization", _TFLITE, "TFLite has no string ops (tf.StringLower, tf.StringSplit)" + _NO_FLEX),
    KnownFailure("MelSpectrogram", ("onnx",), "tf2onnx converts an RFFT only when a ComplexAbs consumes it; "
                                              "MelSpectrogram takes its real and imaginary parts"),
)
"""Measured with TensorFlow 2.21, Keras 3.15, tf2onnx 1.17, LiteRT 2.3 (docs/coverage.md)."""


def column_of(fmt: str, quantization: str = "none") -> str:
    """The matrix column of an export format (TFLite's depends on its quantisation)."""
    return f"tflite-{quantization}" if fmt == "tflite" and quantization != "none" else fmt


def _walk(layer: Any) -> Iterator[Any]:
    """Every layer nested in `layer` (wrappers, sub-models), not descending into a built-in RNN's own cell:
    a failure of the generic `RNN(LSTMCell)` is not one of `LSTM`."""
    for child in layer._flatten_layers(include_self=False, recursive=False):  # noqa: SLF001
        yield child
        if type(child).__name__ in ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"):
            continue
        yield from _walk(child)


def _keys(layer: Any) -> list[str]:
    keys = [type(layer).__name__]
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if name and name != "linear":
        keys.append(f"activation:{name}")
    return keys


def refusals(model: Any, formats: tuple[str, ...], quantization: str = "none",
             table: tuple[KnownFailure, ...] | None = None) -> dict[str, str]:
    """Formats of `formats` that a layer of `model` is known to fail in, each with the reason (first hit).

    Args:
        model: the Keras model.
        formats: the formats asked for.
        quantization: the TFLite quantisation asked for.
        table: the known failures (default: kdeploy's, from the coverage sweep).
    """
    by_key: dict[str, list[KnownFailure]] = {}
    for failure in KNOWN_FAILURES if table is None else table:
        by_key.setdefault(failure.layer, []).append(failure)
    refused: dict[str, str] = {}
    for layer in _walk(model):
        for key in _keys(layer):
            for failure in by_key.get(key, []):
                for fmt in formats:
                    if fmt not in refused and column_of(fmt, quantization) in failure.columns:
                        refused[fmt] = (f"layer {layer.name!r} ({key}) is known not to work in "
                                        f"{column_of(fmt, quantization)}: {failure.reason}")
    return refused

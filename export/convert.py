"""Converters from a Keras model or a SavedModel to SavedModel, TFLite and ONNX (imports TensorFlow)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdeploy.contract.manifest import TFLITE_QUANTIZATIONS
from kdeploy.contract.signature import ModelSignature, slice_feed
from kdeploy.export.keras_model import has_recurrent_layers, serving_function, unrolled_clone
from kdeploy.export.tflite_tf1 import has_reference_variables, set_quantization, tflite_from_tf1_savedmodel

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
    """Convert to TFLite from the model's SavedModel, with the chosen quantisation.

    Models with recurrent layers are converted from an unrolled copy (same weights): TFLite cannot lower an
    RNN loop whose batch is dynamic.

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
        tflite_from_savedmodel(source, signature.name, out_path, quantization, representative_feed)


def tflite_from_savedmodel(
    savedmodel_dir: Path,
    signature_name: str,
    out_path: Path,
    quantization: str = "none",
    representative_feed: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Convert one signature of a SavedModel to TFLite, with the chosen quantisation.

    The .tflite file keeps the signature under its SavedModel name (`signature_keys=[NAME]` writes key NAME),
    which is the name the TFLite backend asks its signature runner for. Inputs and outputs stay float even
    with int8 weights, so the same feed works for every format.

    Raises:
        ConversionError: with the converter's reason.
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"unknown TFLite quantization {quantization!r}")
    if has_reference_variables(savedmodel_dir):  # TF1 variables: TF2's converter cannot, the frozen route can
        try:
            out_path.write_bytes(tflite_from_tf1_savedmodel(savedmodel_dir, signature_name, quantization))
        except Exception as exc:
            raise ConversionError(_converter_reason(exc)) from exc
        return
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir), signature_keys=[signature_name])
    set_quantization(converter, quantization)
    if quantization == "int8":
        if representative_feed is None:
            raise ConversionError("int8 quantization needs representative data (--representative-data FILE.npz)")
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

    tf2onnx's SavedModel route (what `python -m tf2onnx.convert --saved-model` runs), called in this process:
    `tf2onnx.convert.from_keras` fails on Keras 3 models, and a child process would spend most of the export
    importing TensorFlow again. TensorFlow ops that tf2onnx leaves unconverted (which onnxruntime then refuses
    to load) are rewritten with `ONNX_REWRITES`.

    Raises:
        ConversionError: with tf2onnx's reason.
    """
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    # Loading a TF1 graph warns, on TensorFlow's logger, that its variable collections do not serialise.
    tf_logger = logging.getLogger("tensorflow")
    tf_level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(savedmodel_dir), None, None, "serve", [signature_name], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True,
        )
        with tf.device("/cpu:0"):
            # _convert_common is the body of tf2onnx's command line; the public from_graph_def drops the
            # lookup tables that StringLookup and IntegerLookup need.
            tf2onnx_convert._convert_common(  # noqa: SLF001
                graph_def, name=str(savedmodel_dir), opset=opset, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, initialized_tables=tables, output_path=str(out_path),
                custom_op_handlers={op: (handler, []) for op, handler in ONNX_REWRITES.items()},
            )
    except Exception as exc:  # tf2onnx raises ValueError, KeyError, RuntimeError... with the reason in the text
        raise ConversionError(_tf2onnx_reason(exc)) from exc
    finally:
        tf_logger.setLevel(tf_level)
    if not out_path.exists():
        raise ConversionError("tf2onnx wrote no model")


def _erfc_as_one_minus_erf(ctx: Any, node: Any, name: str, args: Any) -> None:
    """Erfc (exact GELU, `keras.activations.gelu(approximate=False)`) as 1 - Erf: ONNX has Erf but no Erfc."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


ONNX_REWRITES: dict[str, Callable[..., None]] = {"Erfc": _erfc_as_one_minus_erf}
"""TensorFlow ops tf2onnx passes through unconverted, rewritten into ONNX ops (op type: tf2onnx handler)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _converter_reason(exc: BaseException) -> str:
    """The lines of a TFLite converter error that say what failed (it also prints MLIR locations)."""
    lines = [line for line in str(exc).splitlines() if "error:" in line or line.startswith("loc(")]
    # MLIR prefixes each reason with its location, `loc(callsite(fused[...] at ...)): `; the reason follows.
    reasons = [line.split("error:", 1)[1].strip() if "error:" in line else line for line in lines]
    reasons = [r.rsplit("): ", 1)[-1].strip() if r.startswith("loc(") else r for r in reasons]
    reasons = [r.rstrip(":").strip() for r in reasons]  # "failed while converting: 'main':"
    unique = list(dict.fromkeys(reasons))[:3]
    # "TF Select ops: ParseExampleV2, ..." names every TensorFlow op the TFLite runtime lacks.
    unique += [line.strip() for line in str(exc).splitlines() if line.startswith("TF Select ops:")][:1]
    return "; ".join(unique) if unique else _first_line(exc)


def _tf2onnx_reason(exc: BaseException) -> str:
    return _first_line(exc)[:500]

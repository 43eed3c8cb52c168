"""What `kdeploy export` starts from: a `.keras` file, a legacy `.h5` file or a SavedModel folder.

Each kind becomes a `Source`: the signature every format keeps, the reference model the version keeps for
parity (`model.keras` for Keras and `.h5` sources, the SavedModel itself for a SavedModel), the formats refused
before converting, and the conversion steps. The exporter runs the steps the same way whatever the kind.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdeploy.common.errors import UsageError
from kdeploy.common.files import sha256_file
from kdeploy.contract.manifest import ARTIFACT_PATHS, VALIDATION_FILE, describe_artifact
from kdeploy.contract.repository import version_folders
from kdeploy.contract.signature import ModelSignature, load_data_file

if TYPE_CHECKING:
    from kdeploy.export.exporter import ExportConfig

logger = logging.getLogger(__name__)

SOURCE_KINDS: tuple[str, ...] = ("keras", "h5", "savedmodel")
"""What an export can start from: a Keras 3 `.keras` file, a legacy (Keras 2 / tf.keras) HDF5 file, a SavedModel."""

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

Step = tuple[str, Callable[[], None]]


def source_kind(path: Path) -> str:
    """The kind of model at `path`: `savedmodel` for a folder with saved_model.pb, `h5` for an HDF5 file (by its
    extension or its first bytes), `keras` for anything else (whose loader says when it is not one).

    Raises:
        UsageError: for a missing path, or a folder that is not a SavedModel.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model file not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        versions = {v: f for v, f in version_folders(path).items() if (f / "saved_model.pb").is_file()}
        if versions:
            raise UsageError(f"{path} is a model folder with SavedModel versions {list(versions)}: pass one version "
                             f"folder, e.g. {versions[max(versions)]}")
        raise UsageError(f"{path} is a folder without saved_model.pb: expected a .keras or .h5 file, "
                         "or a SavedModel folder")
    if path.suffix.lower() in (".h5", ".hdf5") or _starts_like_hdf5(path):
        return "h5"
    return "keras"


def _starts_like_hdf5(path: Path) -> bool:
    # HDF5's signature sits at byte 0, or after a user block of 512, 1024, 2048... bytes.
    with path.open("rb") as file:
        for offset in (0, 512, 1024, 2048):
            file.seek(offset)
            if file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
    return False


@dataclass
class Source:
    """A model made ready for export: its signature and how the version and each format are made from it."""

    kind: str
    """One of `SOURCE_KINDS`."""
    signature: ModelSignature
    reference_format: str
    """The runtime format of the model the version keeps as its parity reference (`keras` or `savedmodel`)."""
    info: dict[str, Any]
    """What the original was, for the manifest's export_options (`kind`, `path`, `sha256`, `signature`)."""
    validation: Path | None
    """Held-out data found with the source (validation.npz), copied into the version."""
    keep: Callable[[Path], None]
    """Writes the reference model into the version folder."""
    steps: Callable[[Path, Path, Path | None], list[Step]]
    """(version folder, scratch folder, representative data) -> the (format, step) pairs to run, in order."""
    refused: dict[str, str] = field(default_factory=dict)
    """Formats refused before converting, with the reason."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know about the source (data found beside it and not used)."""


def open_source(config: ExportConfig) -> Source:
    """Load (or read) the model `config.model_path` names and plan its export.

    Raises:
        UsageError: for a model that cannot be loaded or read, or an unknown signature.
    """
    kind = source_kind(config.model_path)
    if kind == "savedmodel":
        return _savedmodel_source(config)
    return _keras_source(config, kind)


def string_input_refusal(signature: ModelSignature, kind: str) -> str | None:
    """Why ONNX is not exported for a signature with string inputs (None when it has none)."""
    strings = [spec.name for spec in signature.inputs if spec.is_string]
    if not strings:
        return None
    if kind == "savedmodel":
        why = ("onnxruntime has no tf.Example parsing or TensorFlow string ops, so tf2onnx writes a model that does "
               "not load or does not predict what TensorFlow does")
    else:
        why = ("tf2onnx converts TensorFlow's lookup tables without onnxruntime-extensions, but the model it writes "
               "does not predict what Keras does (StringLookup → Embedding: 15% of labels agree)")
    return (f"string input {strings[0]!r}: ONNX is not exported for string inputs. {why}, and kdeploy's "
            "onnxruntime server does not decode strings; use the SavedModel or TFLite")


def _representative_feed(representative: Path | None, signature: ModelSignature, quantization: str) -> Any:
    if quantization != "int8" or representative is None:
        return None
    feed, _ = load_data_file(representative, signature)
    return feed


def _keras_source(config: ExportConfig, kind: str) -> Source:
    from kdeploy.export.convert import onnx_from_savedmodel, savedmodel_from_keras, tflite_from_keras
    from kdeploy.export.keras_model import ensure_built, load_legacy_h5, signature_from_keras
    from kdeploy.export.known_failures import refusals
    from kdeploy.runtimes.keras_model import load_keras_model

    path = Path(config.model_path)
    model = load_keras_model(path, unsafe=config.unsafe) if kind == "keras" else load_legacy_h5(path, config.unsafe)
    ensure_built(model)
    signature = signature_from_keras(model)
    refused = refusals(model, config.formats, config.tflite_quantization) if config.refuse_known_failures else {}
    strings = string_input_refusal(signature, kind)
    if strings and "onnx" in config.formats:
        refused["onnx"] = strings

    def keep(stage: Path) -> None:
        if kind == "keras":
            shutil.copy2(path, stage / ARTIFACT_PATHS["keras"])
        else:
            # The rest of the pipeline (verify's reference, the trainer's files) reads .keras: re-save the loaded
            # legacy model in Keras 3's format; the manifest records the original.
            try:
                model.save(stage / ARTIFACT_PATHS["keras"])
            except Exception as exc:  # Keras raises many types for objects it cannot serialise
                raise UsageError(f"{path} loaded, but Keras cannot re-save it as .keras: {exc}") from None

    def steps(stage: Path, scratch: Path, representative: Path | None) -> list[Step]:
        # The SavedModel is also the source of the other formats: write it to a scratch folder when not asked for.
        savedmodel_dir = stage if "savedmodel" in config.formats else scratch / "savedmodel"
        planned: list[Step] = [("savedmodel", lambda: savedmodel_from_keras(model, signature, savedmodel_dir))]
        if "tflite" in config.formats:
            planned.append(("tflite", lambda: tflite_from_keras(
                model, signature, savedmodel_dir, stage / ARTIFACT_PATHS["tflite"], config.tflite_quantization,
                _representative_feed(representative, signature, config.tflite_quantization))))
        if "onnx" in config.formats:
            planned.append(("onnx", lambda: onnx_from_savedmodel(
                savedmodel_dir, stage / ARTIFACT_PATHS["onnx"], config.onnx_opset, signature.name)))
        return planned

    validation = path.with_name(VALIDATION_FILE)
    return Source(
        kind=kind, signature=signature, reference_format="keras",
        info={"kind": kind, "path": str(path.resolve()), "sha256": sha256_file(path)},
        validation=validation if validation.is_file() else None, keep=keep, steps=steps, refused=refused,
    )


def _savedmodel_source(config: ExportConfig) -> Source:
    from kdeploy.export.convert import onnx_from_savedmodel, tflite_from_savedmodel
    from kdeploy.export.savedmodel import copy_savedmodel, signature_from_savedmodel

    folder = Path(config.model_path)
    name = config.signature or "serving_default"
    signature = signature_from_savedmodel(folder, name)
    refused: dict[str, str] = {}
    strings = string_input_refusal(signature, "savedmodel")
    if strings and "onnx" in config.formats:
        refused["onnx"] = strings

    def steps(stage: Path, scratch: Path, representative: Path | None) -> list[Step]:
        # The copy in the version is the reference and the converters' input: TF Serving reads it as it is.
        planned: list[Step] = [("savedmodel", lambda: copy_savedmodel(folder, stage))]
        if "tflite" in config.formats:
            planned.append(("tflite", lambda: tflite_from_savedmodel(
                stage, name, stage / ARTIFACT_PATHS["tflite"], config.tflite_quantization,
                _representative_feed(representative, signature, config.tflite_quantization))))
        if "onnx" in config.formats:
            planned.append(("onnx", lambda: onnx_from_savedmodel(
                stage, stage / ARTIFACT_PATHS["onnx"], config.onnx_opset, name)))
        return planned

    validation: Path | None = folder / VALIDATION_FILE if (folder / VALIDATION_FILE).is_file() else None
    notes = []
    if validation is not None:
        try:
            load_data_file(validation, signature)
        except UsageError as exc:
            # A SavedModel may have several signatures; its folder's data fits one of them at most.
            notes.append(f"{validation} not used: it does not fit signature {name!r} ({exc})")
            validation = None
    return Source(
        kind="savedmodel", signature=signature, reference_format="savedmodel",
        info={"kind": "savedmodel", "path": str(folder.resolve()),
              "sha256": describe_artifact(folder, "savedmodel").sha256, "signature": name},
        validation=validation, keep=lambda stage: None, steps=steps, refused=refused, notes=notes,
    )

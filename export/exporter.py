"""`kdeploy export`: one model (.keras, .h5 or SavedModel) into one repository version with every format and a
manifest."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdeploy.common.errors import CheckFailedError, UsageError
from kdeploy.common.files import size_of_path
from kdeploy.common.native_log import import_tensorflow_quietly
from kdeploy.common.versions import library_versions
from kdeploy.contract.manifest import (
    ARTIFACT_PATHS,
    FORMATS,
    MANIFEST_FILE,
    TFLITE_QUANTIZATIONS,
    VALIDATION_FILE,
    Manifest,
    describe_artifact,
    write_manifest,
)
from kdeploy.contract.repository import ModelRepository, version_of_folder
from kdeploy.export.parity import ParityReport
from kdeploy.export.sources import open_source, source_kind
from kdeploy.export.verify import VerifyConfig, verify_version
from kdeploy.export.warmup_requests import write_warmup_requests
from kdeploy.storage.urls import StorageUrl

logger = logging.getLogger(__name__)

DEFAULT_ONNX_OPSET = 17
_TOOLS = ("kdeploy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy")


def _check_cancel(cancel: threading.Event | None) -> None:
    """Stop between steps once cancelled: a converter may have swallowed the KeyboardInterrupt itself."""
    if cancel is not None and cancel.is_set():
        raise KeyboardInterrupt("export cancelled")


class ExportFailedError(CheckFailedError):
    """No format at all could be written."""


@dataclass(frozen=True)
class ExportConfig:
    """Everything `kdeploy export` needs, built once from the command line (or by a caller)."""

    model_path: Path
    """A `.keras` file, a legacy `.h5` file (Keras 2 / tf.keras) or a SavedModel folder."""
    repository: Path | StorageUrl
    """A local folder, or a folder in an object store (the version is built locally, then published to it)."""
    name: str
    version: int | None = None
    """Version to write; default: one more than the highest in the repository."""
    formats: tuple[str, ...] = FORMATS
    tflite_quantization: str = "none"
    representative_data: Path | None = None
    """Inputs for int8 calibration (.npz); default: validation.npz beside the model."""
    onnx_opset: int = DEFAULT_ONNX_OPSET
    force: bool = False
    """Replace an existing version."""
    allow_partial: bool = False
    """Succeed when some formats could not be converted."""
    verify: bool = True
    verify_config: VerifyConfig = field(default_factory=VerifyConfig)
    unsafe: bool = False
    """Allow Keras' unsafe deserialisation (Lambda layers)."""
    refuse_known_failures: bool = True
    """Refuse, before converting, a format that one of the model's layers is known to fail in
    (`kdeploy.export.known_failures`); the coverage sweep turns this off to measure the converters."""
    signature: str | None = None
    """The SavedModel signature to export (default `serving_default`); only for a SavedModel source."""

    def check(self) -> None:
        """Reject bad values before any work starts.

        Raises:
            UsageError: naming the first bad value.
        """
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise UsageError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
        if not self.formats:
            raise UsageError("no format asked for; choose from " + ", ".join(FORMATS))
        if self.tflite_quantization not in TFLITE_QUANTIZATIONS:
            raise UsageError(
                f"unknown TFLite quantization {self.tflite_quantization!r}; "
                f"choose from {', '.join(TFLITE_QUANTIZATIONS)}"
            )
        if self.version is not None and self.version < 1:
            raise UsageError(f"--version must be a positive integer, got {self.version}")
        if not 7 <= self.onnx_opset <= 23:
            raise UsageError(f"--onnx-opset {self.onnx_opset} is outside the range tf2onnx supports (7 to 23)")
        kind = source_kind(self.model_path)
        if self.signature is not None and kind != "savedmodel":
            what = {"keras": "a .keras file", "h5": "an .h5 file"}[kind]
            raise UsageError(f"--signature applies to a SavedModel folder only; {self.model_path} is {what}")
        if self.representative_data is not None and not Path(self.representative_data).is_file():
            raise UsageError(f"representative data file not found: {self.representative_data}")


@dataclass
class ExportResult:
    """What an export wrote and how it went."""

    version_dir: Path
    """The published version (or, when parity failed, the hidden folder it was set aside in)."""
    manifest: Manifest
    failed_formats: dict[str, str]
    parity: ParityReport | None
    published: bool
    seconds: dict[str, float]
    """Wall time per step (each format, verify)."""
    url: str | None = None
    """Where the version was published in an object store (None for a local repository)."""

    @property
    def ok(self) -> bool:
        return self.published and not self.failed_formats and (self.parity is None or self.parity.passed)


def export_model(
    config: ExportConfig,
    progress: Callable[[str], None] = logger.info,
    cancel: threading.Event | None = None,
) -> ExportResult:
    """Export a model into `REPO/NAME/VERSION/` with the asked formats, a manifest and a parity report.

    The source is a `.keras` file, a legacy `.h5` file or a SavedModel folder (`kdeploy.export.sources`); the
    version keeps it (`model.keras`, or the SavedModel's own files) as the reference parity compares with.

    The version is built in a hidden staging folder and renamed into place only when complete. A format that
    does not convert is recorded with the converter's reason and the others are still written. When parity
    fails, the version is not published but kept in a hidden `.failed-*` folder for inspection.

    Args:
        config: what to export and how.
        progress: sink for progress lines.
        cancel: once set (SIGTERM), the export stops at the next step and leaves no version behind.

    Raises:
        UsageError: for bad input (missing or foreign model, unknown signature, existing version without `force`).
        KeyboardInterrupt: when cancelled.
    """
    config.check()
    if isinstance(config.repository, StorageUrl):
        return _export_to_store(config, config.repository, progress, cancel)
    repo = ModelRepository(config.repository)
    version = config.version or repo.next_version(config.name)
    if repo.version_dir(config.name, version).exists() and not config.force:
        raise UsageError(f"version {version} of {config.name!r} already exists in {repo.root}; "
                         "pass --force to replace it")
    return _export_into(config, repo, version, progress, cancel)


def _export_to_store(config: ExportConfig, url: StorageUrl, progress: Callable[[str], None],
                     cancel: threading.Event | None) -> ExportResult:
    """Build and verify the version in a local folder, then publish it to the store (manifest last)."""
    from kdeploy.storage.objects import ObjectStorage
    from kdeploy.storage.publish import publish_version

    local = ModelRepository(Path(tempfile.mkdtemp(prefix="kdeploy-export-")))
    keep = False
    try:
        storage = ObjectStorage(url.child(config.name))
        existing = {v: f for f in storage.list_folders() if (v := version_of_folder(f)) is not None}
        version = config.version or (max(existing) + 1 if existing else 1)
        local.version_dir(config.name, version)  # checks the name
        folder = existing.get(version, str(version))  # a version keeps the folder it has (`0005/` is version 5)
        if version in existing and not config.force and storage.exists(f"{folder}/{MANIFEST_FILE}"):
            raise UsageError(f"version {storage.where(folder)} already exists; pass --force to replace it")
        result = _export_into(config, local, version, progress, cancel)
        if not result.published:
            keep = True  # parity failed: the hidden folder it was set aside in stays for inspection
            return result
        result.url = publish_version(result.version_dir, storage, folder, force=config.force, progress=progress,
                                     cancel=cancel)
        return result
    finally:
        if not keep:
            shutil.rmtree(local.root, ignore_errors=True)


def _export_into(config: ExportConfig, repo: ModelRepository, version: int, progress: Callable[[str], None],
                 cancel: threading.Event | None) -> ExportResult:
    model_dir = repo.model_dir(config.name)

    # Heavy imports only once the arguments are known to be good.
    import_tensorflow_quietly()
    from kdeploy.export.convert import ConversionError

    source = open_source(config)
    signature = source.signature
    representative = config.representative_data or source.validation
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    options: dict[str, dict[str, object]] = {
        "savedmodel": {"signature": signature.name},
        "tflite": {"quantization": config.tflite_quantization},
        "onnx": {"opset": config.onnx_opset},
    }
    for note in source.notes:
        progress(f"export: {note}")
    refused = source.refused
    for fmt, reason in refused.items():
        progress(f"export: {fmt} refused before converting: {reason}")

    with repo.staging(config.name, version) as stage, tempfile.TemporaryDirectory(prefix="kdeploy-export-") as tmp:
        source.keep(stage)
        if source.validation is not None:
            shutil.copy2(source.validation, stage / VALIDATION_FILE)
        steps = source.steps(stage, Path(tmp), representative)
        for index, (fmt, step) in enumerate(steps, start=1):
            _check_cancel(cancel)
            progress(f"export [{index}/{len(steps)}] {fmt} ...")
            started = time.perf_counter()
            try:
                if fmt in refused:
                    raise ConversionError(refused[fmt])
                step()
            except ConversionError as exc:
                _check_cancel(cancel)  # the converter may have turned the interruption into its own error
                failed[fmt] = str(exc)
                progress(f"export [{index}/{len(steps)}] {fmt} FAILED: {exc}")
                if fmt == "savedmodel":
                    # Every other format is converted from the SavedModel.
                    failed.update({f: "not attempted: the SavedModel could not be written"
                                   for f in config.formats if f != fmt})
                    break
                continue
            except Exception:
                # A KeyboardInterrupt raised inside TensorFlow's C++ code can come out as another exception
                # (pybind11: "MISMATCH of original and normalized active exception types"): once cancelled, it is
                # the cancellation.
                _check_cancel(cancel)
                raise
            seconds[fmt] = time.perf_counter() - started
            if fmt in config.formats:
                size = size_of_path(stage / ARTIFACT_PATHS[fmt]) if fmt != "savedmodel" else None
                progress(f"export [{index}/{len(steps)}] {fmt} done in {seconds[fmt]:.1f} s"
                         + (f", {size / 1024:.0f} KiB" if size else ""))
        failed = {f: r for f, r in failed.items() if f in config.formats}
        written = [f for f in config.formats if f not in failed]
        if not written:
            raise_for = "; ".join(f"{f}: {r}" for f, r in failed.items())
            raise ExportFailedError(f"no format could be written ({raise_for})")
        manifest = Manifest(
            name=config.name,
            version=version,
            signature=signature,
            source=describe_artifact(stage, source.reference_format),
            artifacts={f: describe_artifact(stage, f, options[f]) for f in FORMATS if f in written},
            failed_formats=failed,
            validation_data=VALIDATION_FILE if (stage / VALIDATION_FILE).exists() else None,
            export_options={
                "formats": list(config.formats), "tflite_quantization": config.tflite_quantization,
                "onnx_opset": config.onnx_opset, "unsafe": config.unsafe,
                "source": source.info,
                "representative_data": (str(representative) if representative and config.tflite_quantization == "int8"
                                        else None),
            },
            tool_versions=library_versions(_TOOLS),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        _check_cancel(cancel)
        write_manifest(stage, manifest)
        warmup = write_warmup_requests(stage, manifest)
        if warmup is not None:
            progress(f"export: TF Serving warm-up requests written to {warmup.relative_to(stage)}")
        parity = None
        if config.verify:
            progress(f"verify: comparing every format with the source model ({source.reference_format}) ...")
            started = time.perf_counter()
            parity = verify_version(stage, config.verify_config, progress)
            seconds["verify"] = time.perf_counter() - started
        _check_cancel(cancel)
        if parity is not None and not parity.passed:
            kept = repo.set_aside(stage, config.name, version)
            return ExportResult(kept, manifest, failed, parity, published=False, seconds=seconds)
        target = repo.publish(stage, config.name, version, force=config.force)
    logger.debug("exported %s into %s", config.model_path, model_dir)
    return ExportResult(target, manifest, failed, parity, published=True, seconds=seconds)


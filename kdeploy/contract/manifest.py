"""`manifest.json`: what one model version holds and promises (standard library and NumPy only).

Every later stage reads a version through its manifest: the formats with their files and checksums, the
signature, the source model, and how it was exported. The server reads it without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.common.files import sha256_path, size_of_path, write_json_atomic
from kdeploy.contract.signature import DEFAULT_SIGNATURE, ModelSignature, SignatureError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

FORMATS: tuple[str, ...] = ("savedmodel", "tflite", "onnx")
"""Exported formats, in the order export writes them."""

TFLITE_QUANTIZATIONS: tuple[str, ...] = ("none", "fp16", "dynamic-int8", "int8")

SOURCE_FORMAT = "keras"
"""The format name of the source model that each version keeps beside its exports."""

ARTIFACT_PATHS: dict[str, str] = {
    "keras": "model.keras",
    # TF Serving reads saved_model.pb and variables/ straight from the version directory.
    "savedmodel": "saved_model.pb",
    "tflite": "model.tflite",
    # Triton's onnxruntime backend looks for model.onnx by default.
    "onnx": "model.onnx",
}
SAVEDMODEL_FILES: tuple[str, ...] = ("saved_model.pb", "variables", "assets", "fingerprint.pb")
VALIDATION_FILE = "validation.npz"


class ManifestError(UsageError):
    """A manifest is missing, unreadable, or does not match the files beside it."""


@dataclass(frozen=True)
class Artifact:
    """One file (or, for a SavedModel, a set of files) in a version directory."""

    format: str
    path: str
    """Relative to the version directory."""
    bytes: int
    sha256: str
    options: dict[str, Any] = field(default_factory=dict)
    """How it was made (TFLite quantisation, ONNX opset)."""

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.path, "bytes": self.bytes, "sha256": self.sha256,
                "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(format=str(data["format"]), path=str(data["path"]), bytes=int(data["bytes"]),
                   sha256=str(data["sha256"]), options=dict(data.get("options", {})))


def artifact_files(version_dir: Path, fmt: str, path: str | None = None) -> list[Path]:
    """The files on disk that make up one format's artifact (`path`: its file, when not the default name)."""
    if fmt == "savedmodel":
        return [version_dir / name for name in SAVEDMODEL_FILES if (version_dir / name).exists()]
    return [version_dir / (path or ARTIFACT_PATHS[fmt])]


ARTIFACT_SUFFIXES: dict[str, str] = {"tflite": ".tflite", "onnx": ".onnx"}


def bare_artifact_path(version_dir: Path, fmt: str) -> str | None:
    """The artifact of format `fmt` in a version folder kdeploy did not export, relative to it, or None.

    The default names first (`saved_model.pb`, `model.onnx`, `model.tflite`: TF Serving's and Triton's); else the
    folder's only file with the format's suffix (a bare `mobilenet.tflite`).
    """
    version_dir = Path(version_dir)
    if (version_dir / ARTIFACT_PATHS[fmt]).is_file():
        return ARTIFACT_PATHS[fmt]
    suffix = ARTIFACT_SUFFIXES.get(fmt)
    if suffix is None or not version_dir.is_dir():
        return None
    candidates = sorted(p.name for p in version_dir.iterdir() if p.is_file() and p.name.endswith(suffix))
    return candidates[0] if len(candidates) == 1 else None


def _digest_of(paths: list[Path], root: Path) -> tuple[int, str]:
    if len(paths) == 1 and paths[0].is_file():
        return size_of_path(paths[0]), sha256_path(paths[0])
    # Several entries (a SavedModel): hash each, then hash the list, so the digest covers names and bytes.
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_path(path)}\n".encode())
    return sum(size_of_path(p) for p in paths), digest.hexdigest()


def describe_artifact(version_dir: Path, fmt: str, options: Mapping[str, Any] | None = None,
                      path: str | None = None) -> Artifact:
    """Measure one format's files in `version_dir` (size and sha256) for the manifest."""
    size, digest = _digest_of(artifact_files(version_dir, fmt, path), version_dir)
    return Artifact(format=fmt, path=path or ARTIFACT_PATHS[fmt], bytes=size, sha256=digest,
                    options=dict(options or {}))


@dataclass(frozen=True)
class Manifest:
    """The contents of `manifest.json`."""

    name: str
    version: int
    signature: ModelSignature
    """The default signature (`serving_default`, or the only one): what a request that names none runs."""
    source: Artifact | None
    """The model the formats were exported from, kept in the version as the parity reference (its format is a
    runtime's: `keras`, or `savedmodel` for a SavedModel source). None for a version kdeploy did not export, whose
    manifest is read from the artifact itself (see `discovered`)."""
    artifacts: dict[str, Artifact]
    """Exported formats that were written, keyed by format name."""
    failed_formats: dict[str, str] = field(default_factory=dict)
    """Formats that were asked for but could not be converted, with the converter's reason."""
    validation_data: str | None = None
    """Relative path of held-out inputs (and labels) for parity checks, warm-up and load tests."""
    export_options: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    other_signatures: tuple[ModelSignature, ...] = ()
    """Further signatures of the artifact (a SavedModel may have several), served by name."""

    @property
    def discovered(self) -> bool:
        """Whether this manifest was read from a bare artifact, not from a `manifest.json` kdeploy export wrote."""
        return self.source is None

    @property
    def signatures(self) -> dict[str, ModelSignature]:
        """Every signature by name, the default first."""
        return {s.name: s for s in (self.signature, *self.other_signatures)}

    def signature_named(self, name: str) -> ModelSignature:
        """The signature a request names; "" (and `serving_default` when the default has another name) means the
        default.

        Raises:
            SignatureError: for a name the version does not have, listing the ones it has.
        """
        if name in ("", DEFAULT_SIGNATURE) and name not in self.signatures:
            return self.signature
        found = self.signatures.get(name)
        if found is None:
            raise SignatureError(f"unknown signature {name!r}; this model serves {sorted(self.signatures)}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "signature": self.signature.to_json(),
            "source": self.source.to_json() if self.source is not None else None,
            "formats": {fmt: a.to_json() for fmt, a in self.artifacts.items()},
            "failed_formats": dict(self.failed_formats),
            "validation_data": self.validation_data,
            "export_options": dict(self.export_options),
            "tool_versions": dict(self.tool_versions),
            **({"other_signatures": [s.to_json() for s in self.other_signatures]} if self.other_signatures else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        schema = int(data.get("schema_version", 0))
        if schema != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema version {schema} is not supported (expected {SCHEMA_VERSION})")
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            signature=ModelSignature.from_json(data["signature"]),
            source=Artifact.from_json(data["source"]) if data["source"] is not None else None,
            artifacts={fmt: Artifact.from_json(a) for fmt, a in data["formats"].items()},
            failed_formats=dict(data.get("failed_formats", {})),
            validation_data=data.get("validation_data"),
            export_options=dict(data.get("export_options", {})),
            tool_versions=dict(data.get("tool_versions", {})),
            created_at=str(data.get("created_at", "")),
            schema_version=schema,
            other_signatures=tuple(ModelSignature.from_json(s) for s in data.get("other_signatures", ())),
        )


def manifest_of_artifact(name: str, version: int, version_dir: Path, fmt: str, path: str,
                         signatures: Sequence[ModelSignature]) -> Manifest:
    """The manifest of a version kdeploy did not export, from its one artifact and the signatures read from it.

    Args:
        name: the model's name.
        version: the version number.
        version_dir: the version folder.
        fmt: the artifact's format.
        path: the artifact's path in the folder (see `bare_artifact_path`).
        signatures: the artifact's signatures, the default first.
    """
    if not signatures:
        raise ManifestError(f"{Path(version_dir) / path} has no signature to serve")
    return Manifest(name=name, version=version, signature=signatures[0], other_signatures=tuple(signatures[1:]),
                    source=None, artifacts={fmt: describe_artifact(Path(version_dir), fmt, path=path)})


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` into `version_dir` atomically and return its path."""
    path = Path(version_dir) / MANIFEST_FILE
    write_json_atomic(path, manifest.to_json())
    return path


def read_manifest(version_dir: Path) -> Manifest:
    """Read and parse a version's `manifest.json`.

    Raises:
        ManifestError: when the file is missing or not a valid manifest.
    """
    path = Path(version_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_FILE} in {version_dir}: not a version written by kdeploy export") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} is not a valid manifest: {exc!r}") from None


def checksum_problems(version_dir: Path, manifest: Manifest, formats: Sequence[str] | None = None) -> list[str]:
    """Compare artifacts' files with the hashes the manifest records.

    Args:
        version_dir: the version folder.
        manifest: its manifest.
        formats: the formats to check (default: the source and every exported format).

    Returns:
        One message per artifact that is missing or changed; empty when all match.
    """
    problems = []
    artifacts = [*([manifest.source] if manifest.source is not None else []), *manifest.artifacts.values()]
    for artifact in (a for a in artifacts if formats is None or a.format in formats):
        files = artifact_files(Path(version_dir), artifact.format, artifact.path)
        if not files or not all(f.exists() for f in files):
            problems.append(f"{artifact.format}: {artifact.path} is missing")
            continue
        _, digest = _digest_of(files, Path(version_dir))
        if digest != artifact.sha256:
            problems.append(f"{artifact.format}: {artifact.path} does not match the sha256 in {MANIFEST_FILE}")
    return problems

"""One model from a folder laid out however its storage left it: `kdeploy serve --model-dir DIR [--model-name N]`.

KServe's storage initializer copies an InferenceService's `storageUri` into `/mnt/models` as it finds it, so the
folder may be:

- a **version folder** (the URI named `REPO/NAME/VERSION`, or a single artifact such as `model.onnx`): served as
  the one version of model NAME (its manifest's version, else the folder's number, else 1);
- a **model folder** of integer versions (`REPO/NAME`): served as model NAME with the version policy;
- a **repository** of model folders (`REPO`): every model in it; when it holds exactly one, under NAME.

NAME is `--model-name` (KServe passes the InferenceService's name), else the folder's own name. The server keeps
reading the folder as it does a repository (a version folder through a link in a temporary folder), so new
versions copied into a model folder are picked up by polling.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import MANIFEST_FILE
from kdeploy.contract.repository import version_numbers, version_of_folder
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.serve.sources import sources_from_repository

logger = logging.getLogger(__name__)

ARTIFACT_NAMES = (MANIFEST_FILE, "model.onnx", "saved_model.pb", "saved_model.pbtxt")
ARTIFACT_SUFFIXES = (".onnx", ".tflite")


def layout_of(path: Path) -> str:
    """`version`, `model` or `repository` (how the folder is laid out), or `empty`."""
    if any((path / name).is_file() for name in ARTIFACT_NAMES) or any(
            p.is_file() and p.suffix in ARTIFACT_SUFFIXES for p in path.iterdir()):
        return "version"
    if version_numbers(path):
        return "model"
    if any(p.is_dir() and not p.name.startswith(".") and version_numbers(p) for p in path.iterdir()):
        return "repository"
    return "empty"


def sources_from_model_dir(path: Path, name: str | None, policy: VersionPolicy) -> list[ModelSource]:
    """The models to serve from `path` (see the module's description).

    Raises:
        UsageError: when the folder is missing or holds no model in any of the three layouts.
    """
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"--model-dir {path} is not a directory")
    layout = layout_of(path)
    logger.info("model folder %s is laid out as a %s folder", path, layout)
    if layout == "version":
        model = name or (path.parent.name if path.name.isdigit() else path.name)
        version = _version_of(path)
        # The model manager reads NAME/VERSION folders: give the version folder one, through a link.
        base = Path(tempfile.mkdtemp(prefix="kdeploy-model-dir-")) / model
        base.mkdir()
        (base / str(version)).symlink_to(path.resolve(), target_is_directory=True)
        return [ModelSource(model, base, VersionPolicy())]
    if layout == "model":
        return [ModelSource(name or path.name, path, policy)]
    if layout == "repository":
        sources = sources_from_repository(path, [], policy)
        if name and len(sources) == 1:
            return [ModelSource(name, sources[0].base_path, policy)]
        return sources
    raise UsageError(f"--model-dir {path} holds no model: expected a version folder (manifest.json, model.onnx, "
                     "saved_model.pb or a .tflite file), a model folder of integer versions, or a repository of "
                     "model folders")


def _version_of(path: Path) -> int:
    manifest = path / MANIFEST_FILE
    if manifest.is_file():
        try:
            version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            version = None
        if isinstance(version, int) and version > 0:
            return version
    return version_of_folder(path.name) or 1

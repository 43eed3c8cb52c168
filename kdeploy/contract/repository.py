"""The model repository on disk: `REPO/NAME/VERSION/` (standard library only).

The layout is the one TF Serving and Triton both read: a folder per model, and in it a folder per version whose
name is a positive integer. As in TF Serving, any all-digit name is a version and is read as a number (`00000123` is
version 123, the name TF Serving's own test models use); `version_folders` is the one place that maps versions to
the folders that hold them, so every stage finds `00000123` when it looks for version 123. Versions are built in a
hidden staging folder beside them and renamed into place when complete, so a server polling the repository never
sees half a version. Hidden folders (`.staging-*`,
`.failed-*`) are ignored by TF Serving, Triton and kdeploy alike because their names are not integers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.common.files import current_umask

logger = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def version_of_folder(name: str) -> int | None:
    """The version a folder name stands for, or None for any other folder: an all-digit name read as a number
    (`00000123` is 123), as TF Serving reads version folders; 0 is not a version."""
    return int(name) if name.isdigit() and name.isascii() and int(name) > 0 else None


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Each version of a model folder and the folder holding it, ascending by version (see `version_of_folder`).

    Hidden folders do not count. When two names read as the same number (`123` and `0123`), the one that sorts last
    wins, as TF Serving keeps the last it lists (and logs the other as ignored).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found: dict[int, Path] = {}
    for child in sorted(model_dir.iterdir(), key=lambda p: p.name):
        version = version_of_folder(child.name)
        if version is not None and child.is_dir():
            found[version] = child
    return dict(sorted(found.items()))


def version_numbers(model_dir: Path) -> list[int]:
    """The versions in a model folder (see `version_folders`), ascending."""
    return list(version_folders(model_dir))


class ModelRepository:
    """A folder of models, each a folder of integer versions."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"repository path {self.root} is a file, not a directory")

    def model_dir(self, name: str) -> Path:
        if not _MODEL_NAME.match(name):
            raise UsageError(
                f"model name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
                "starting with a letter or digit"
            )
        return self.root / name

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, ascending."""
        return version_numbers(self.model_dir(name))

    def latest_version(self, name: str) -> int:
        """The highest published version.

        Raises:
            UsageError: when the model has no version.
        """
        versions = self.versions(name)
        if not versions:
            raise UsageError(f"model {name!r} has no version in {self.root}")
        return versions[-1]

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1

    def version_dir(self, name: str, version: int) -> Path:
        """The folder of a version: the existing one (whatever its digits, `00000123`), else `NAME/VERSION`."""
        model_dir = self.model_dir(name)
        return version_folders(model_dir).get(version, model_dir / str(version))

    @contextmanager
    def staging(self, name: str, version: int) -> Iterator[Path]:
        """A hidden folder beside the versions to build one in; removed when the block exits.

        Call `publish` inside the block to move it into place; anything that goes wrong before that leaves
        no version folder behind.
        """
        if version < 1:
            raise UsageError(f"version must be a positive integer, got {version}")
        model_dir = self.model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
        # mkdtemp creates 0700; a published version must be readable by servers running as other users.
        os.chmod(stage, 0o777 & ~current_umask())
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def publish(self, stage: Path, name: str, version: int, *, force: bool = False) -> Path:
        """Rename a complete staging folder into `NAME/VERSION`.

        With `force`, an existing version is moved aside first and deleted after the new one is in place.

        Raises:
            UsageError: when the version exists and `force` is not set.
        """
        target = self.version_dir(name, version)
        trash: Path | None = None
        if target.exists():
            if not force:
                raise UsageError(f"version {version} of {name!r} already exists in {self.root}; "
                                 "pass --force to replace it")
            trash = target.with_name(f".replaced-{version}-{os.getpid()}-{time.time_ns()}")
            os.rename(target, trash)
        try:
            os.rename(stage, target)
        except OSError as exc:
            if trash is not None:
                os.rename(trash, target)
            raise UsageError(f"cannot publish version {version} of {name!r}: {exc}") from None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("published %s", target)
        return target

    def set_aside(self, stage: Path, name: str, version: int) -> Path:
        """Keep a staging folder that must not be served (it failed a check) under a hidden name."""
        kept = self.model_dir(name) / f".failed-{version}-{time.strftime('%Y%m%dT%H%M%S')}"
        os.rename(stage, kept)
        return kept


def resolve_version_dir(path: Path, version: int | None = None) -> Path:
    """Find a version folder from `REPO/NAME` (latest, or `version`) or from `REPO/NAME/VERSION` itself.

    Raises:
        UsageError: when the path does not exist or holds no version.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory (expected REPO/NAME or REPO/NAME/VERSION)")
    # A version folder: it has a manifest, or (a version kdeploy did not export) no version folders of its own.
    if path.name.isdigit() and ((path / "manifest.json").exists() or not version_folders(path)):
        if version is not None and int(path.name) != version:
            raise UsageError(f"{path} is version {path.name}, but --version {version} was asked for")
        return path
    repo = ModelRepository(path.parent)
    if version is None:
        version = repo.latest_version(path.name)
    target = repo.version_dir(path.name, version)
    if not target.is_dir():
        raise UsageError(f"model {path.name!r} has no version {version} (versions: {repo.versions(path.name)})")
    return target

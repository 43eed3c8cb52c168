"""Bring one model version from an object store into a local cache folder, checked against its manifest.

A version is downloaded into a hidden staging folder beside the cached versions, every artifact is checked against
the sha256 in its `manifest.json`, and only then is the folder renamed into place: a server loading from the cache
never sees a partial or corrupted version. A record of what was fetched (each object's size and ETag) is kept beside
it, so a restart downloads nothing that did not change, and a changed version re-downloads only its changed files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdeploy.common.files import current_umask, write_json_atomic
from kdeploy.contract.manifest import MANIFEST_FILE, checksum_problems, read_manifest
from kdeploy.storage.errors import REFUSED, StorageError
from kdeploy.storage.layout import is_folder_marker
from kdeploy.storage.objects import ObjectInfo, ObjectStorage

logger = logging.getLogger(__name__)

RECORD_PREFIX = ".sync-"
"""`MODEL/.sync-FOLDER.json`: what the cached version FOLDER was made from (hidden: not a version folder)."""


def default_cache_dir() -> Path:
    """Where versions from object stores are cached unless told: `$XDG_CACHE_HOME/kdeploy`, else `~/.cache/kdeploy`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdeploy"


class VersionRefusedError(StorageError):
    """A downloaded version does not match its manifest: it is not cached, and never served."""

    def __init__(self, message: str) -> None:
        super().__init__(message, REFUSED)


@dataclass(frozen=True)
class SyncResult:
    """What bringing one version into the cache took."""

    path: Path
    downloaded_files: int
    downloaded_bytes: int
    reused_files: int
    seconds: float


def listing_signature(files: Sequence[ObjectInfo]) -> dict[str, list[object]]:
    """Path -> [size, ETag] of each object: what a cached copy is compared with."""
    return {f.path: [f.size, f.etag] for f in files}


def record_path(model_dir: Path, folder: str) -> Path:
    return model_dir / f"{RECORD_PREFIX}{folder}.json"


def read_record(model_dir: Path, folder: str) -> dict[str, list[object]]:
    """The listing a cached version was made from ({} when unknown)."""
    try:
        data = json.loads(record_path(model_dir, folder).read_text(encoding="utf-8"))
        return {str(k): list(v) for k, v in data.get("files", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def is_cached(model_dir: Path, folder: str, files: Sequence[ObjectInfo]) -> bool:
    """Whether the cache holds exactly this listing of the version (nothing to download)."""
    return (model_dir / folder).is_dir() and read_record(model_dir, folder) == listing_signature(files)


def sync_version(storage: ObjectStorage, folder: str, files: Sequence[ObjectInfo], model_dir: Path,
                 *, workers: int = 8, progress: Callable[[int], None] | None = None) -> SyncResult:
    """Bring version `folder` (its objects `files`, relative to it) from `storage` into `model_dir/folder`.

    Args:
        storage: the model's folder in the store.
        folder: the version's folder name.
        files: the version's objects, as listed.
        model_dir: the model's folder in the cache.
        workers: parallel downloads (parts of large files count separately).
        progress: called with the bytes of each chunk written.

    Raises:
        VersionRefusedError: when a file does not match the manifest (nothing is cached).
        StorageError: when the store fails (nothing is cached).
    """
    started = time.perf_counter()
    target = model_dir / folder
    if is_cached(model_dir, folder, files):
        return SyncResult(target, 0, 0, len(files), 0.0)
    model_dir.mkdir(parents=True, exist_ok=True)
    previous = read_record(model_dir, folder) if target.is_dir() else {}
    stage = Path(tempfile.mkdtemp(prefix=f".staging-{folder}-", dir=model_dir))
    os.chmod(stage, 0o777 & ~current_umask())
    try:
        fetch, reused = [], 0
        for info in files:
            local = stage / info.path
            old = target / info.path
            if is_folder_marker(info.path):
                local.parent.mkdir(parents=True, exist_ok=True)
            elif previous.get(info.path) == [info.size, info.etag] and old.is_file():
                local.parent.mkdir(parents=True, exist_ok=True)
                os.link(old, local)  # same bytes as before: no download, no copy
                reused += 1
            else:
                fetch.append((info, local))
        downloaded = storage.download(fetch, folder, workers=workers, progress=progress)
        _check(stage, storage.where(folder))
        if is_cached(model_dir, folder, files):
            return SyncResult(target, 0, 0, len(files), time.perf_counter() - started)  # another process won
        _replace(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_json_atomic(record_path(model_dir, folder),
                      {"url": storage.where(folder), "files": listing_signature(files)})
    result = SyncResult(target, len(fetch), downloaded, reused, time.perf_counter() - started)
    logger.info("synced %s into %s: %d files (%.1f MiB) downloaded, %d unchanged, %.2f s", storage.where(folder),
                target, result.downloaded_files, downloaded / 2**20, reused, result.seconds)
    return result


def _check(stage: Path, where: str) -> None:
    """Refuse a version whose files do not match its manifest (a version without one has nothing to check)."""
    if not (stage / MANIFEST_FILE).is_file():
        return
    try:
        manifest = read_manifest(stage)
    except Exception as exc:
        raise VersionRefusedError(f"{where} refused: {exc}") from None
    problems = checksum_problems(stage, manifest)
    if problems:
        raise VersionRefusedError(f"{where} refused: " + "; ".join(problems))


def _replace(stage: Path, target: Path) -> None:
    """Rename the checked staging folder into place (an older copy moved aside first, removed after)."""
    trash = None
    if target.exists():
        trash = target.with_name(f".replaced-{target.name}-{os.getpid()}-{time.time_ns()}")
        os.rename(target, trash)
    try:
        os.rename(stage, target)
    except OSError:
        if trash is not None:
            os.rename(trash, target)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


STALE_SECONDS = 3600.0
"""Leftover staging folders (a process killed mid-download) older than this are removed; younger ones may belong to
another server process sharing the cache (`--workers`)."""


def remove_stale(model_dir: Path, now: float | None = None) -> int:
    """Remove staging and trash folders that a killed process left in a model's cache folder; returns how many."""
    if not model_dir.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for path in model_dir.iterdir():
        if path.name.startswith((".staging-", ".replaced-", ".removed-")) and path.is_dir():
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def remove_cached(model_dir: Path, folder: str) -> None:
    """Drop a version from the cache (renamed aside first, so a reader never sees half a folder)."""
    target = model_dir / folder
    record_path(model_dir, folder).unlink(missing_ok=True)
    if target.is_dir():
        trash = target.with_name(f".removed-{folder}-{os.getpid()}-{time.time_ns()}")
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)

"""Publish a finished local version folder to an object store: every file first, `manifest.json` last.

A server treats a version as complete only once its manifest exists, so it never loads a half-uploaded version. The
manifest is written create-only (a conditional write, where the store honours it), so two exports never silently
overwrite one version; `force` replaces a version. A claim object (`VERSION/.exporting`, written create-only first)
keeps two exports from mixing files in one version folder. An export that fails or is interrupted deletes what it
uploaded, manifest-less, so nothing ever serves it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import MANIFEST_FILE
from kdeploy.storage.errors import EXISTS, StorageError
from kdeploy.storage.layout import CLAIM_FILE, FOLDER_MARKER
from kdeploy.storage.objects import ObjectStorage

logger = logging.getLogger(__name__)

PROGRESS_STEP = 0.1
"""A progress line at least every tenth of the bytes (and one per file)."""


def version_objects(local: Path) -> list[tuple[Path, str]]:
    """(local file, object path) for every file of a version folder, empty folders as markers, manifest last."""
    pairs = []
    for root, dirs, files in os.walk(local):
        dirs.sort()
        relative = Path(root).relative_to(local)
        if not dirs and not files and relative != Path("."):
            pairs.append((Path(root), (relative / FOLDER_MARKER).as_posix()))
        pairs += [(Path(root) / name, (relative / name).as_posix()) for name in sorted(files)]
    pairs.sort(key=lambda pair: (pair[1] == MANIFEST_FILE, pair[1]))
    return pairs


def publish_version(local: Path, storage: ObjectStorage, folder: str, *, force: bool = False,
                    progress: Callable[[str], None] = logger.info,
                    cancel: threading.Event | None = None) -> str:
    """Upload the version folder `local` to `folder` below `storage` (a model's folder).

    Args:
        local: the complete, verified version folder.
        storage: the model's folder in the store.
        folder: the version folder's name.
        force: replace a version that exists (its manifest is deleted first, so no server starts syncing a mix).
        progress: sink for progress lines.
        cancel: once set, stop before the next file and clean up.

    Returns:
        The URL of the published version.

    Raises:
        UsageError: when the version exists (or another export holds it) and `force` is not set.
        StorageError: when the store refuses a write; what was uploaded is deleted.
        KeyboardInterrupt: when cancelled; what was uploaded is deleted.
    """
    where = storage.where(folder)
    existing = {o.path for o in storage.list_files(folder)}
    if not force:
        if MANIFEST_FILE in existing:
            raise UsageError(f"version {where} already exists; pass --force to replace it")
        if existing:
            held = "another export holds it" if CLAIM_FILE in existing else "it holds files but no manifest.json"
            raise UsageError(f"version {where} is not empty ({held}: a running export, or an interrupted one that "
                             "could not clean up); pass --force to replace it")
    objects = version_objects(local)
    _claim(storage, f"{folder}/{CLAIM_FILE}", where, force)
    written: list[str] = []
    total = sum(p.stat().st_size for p, _ in objects if p.is_file()) or 1
    sent = [0, 0.0]  # bytes, fraction last reported

    def count(size: int) -> None:
        sent[0] += size
        if sent[0] / total - sent[1] >= PROGRESS_STEP:
            sent[1] = sent[0] / total
            progress(f"upload {sent[1]:.0%} ({sent[0] / 2**20:.1f}/{total / 2**20:.1f} MiB) to {where}")

    try:
        if force and MANIFEST_FILE in existing:
            storage.delete([f"{folder}/{MANIFEST_FILE}"])  # no new sync starts on a half-replaced version
        for index, (path, name) in enumerate(objects, start=1):
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt("export cancelled")
            key = f"{folder}/{name}"
            if name.endswith(FOLDER_MARKER) and path.is_dir():
                _upload_bytes(storage, b"", key)
            else:
                progress(f"upload [{index}/{len(objects)}] {name} ({path.stat().st_size / 2**20:.1f} MiB)")
                storage.upload(path, key, create_only=name == MANIFEST_FILE, progress=count)
            written.append(key)
        stale = sorted(existing - {name for _, name in objects} - {CLAIM_FILE})
        storage.delete([f"{folder}/{name}" for name in stale])
    except StorageError as exc:
        if exc.kind == EXISTS:  # the manifest's create-only write lost: the files under these names are theirs now
            raise UsageError(f"version {where} was published by another export meanwhile; this one stopped") from None
        _clean_up(storage, written, f"{folder}/{CLAIM_FILE}", where)
        raise
    except BaseException:
        _clean_up(storage, written, f"{folder}/{CLAIM_FILE}", where)
        raise
    storage.delete([f"{folder}/{CLAIM_FILE}"])
    progress(f"upload done: {len(objects)} objects, {total / 2**20:.1f} MiB, manifest.json last")
    return where


def _claim(storage: ObjectStorage, key: str, where: str, force: bool) -> None:
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
    try:
        _upload_bytes(storage, body, key, create_only=not force)
    except StorageError as exc:
        if exc.kind == EXISTS:
            raise UsageError(f"version {where} is being exported by another run; pass --force to replace it") from None
        raise


def _upload_bytes(storage: ObjectStorage, data: bytes, key: str, create_only: bool = False) -> None:
    with tempfile.NamedTemporaryFile(prefix="kdeploy-upload-") as handle:
        handle.write(data)
        handle.flush()
        storage.upload(Path(handle.name), key, create_only=create_only)


def _clean_up(storage: ObjectStorage, keys: list[str], claim: str, where: str) -> None:
    """Delete what an unfinished export uploaded, its claim last (a server skips a claimed folder, so files left by
    a clean-up that fails half-way are never served), best effort: the store may be what failed."""
    try:
        storage.delete(keys)
        storage.delete([claim])
        logger.warning("export to %s stopped: deleted the %d objects it had written", where, len(keys))
    except StorageError as exc:
        logger.error("export to %s stopped and could not delete what it wrote (no manifest, so no server loads it): "
                     "%s", where, exc)

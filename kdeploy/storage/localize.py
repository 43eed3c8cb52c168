"""One version from an object store as a local folder, for the commands that read a version (verify, configs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import MANIFEST_FILE, Manifest, ManifestError
from kdeploy.contract.repository import version_of_folder
from kdeploy.storage.layout import split_listing
from kdeploy.storage.objects import ObjectInfo, ObjectStorage
from kdeploy.storage.sync import sync_version
from kdeploy.storage.urls import StorageUrl

logger = logging.getLogger(__name__)


def version_listing(storage: ObjectStorage) -> dict[str, list[ObjectInfo]]:
    """A model folder's finished-looking versions (folder name -> objects relative to it), from one listing."""
    return split_listing(storage.list_files())[0]


def pick_version(url: StorageUrl, versions: dict[str, list[ObjectInfo]], version: int | None) -> str:
    """The folder of `version`, or of the highest version (with a manifest when any version has one).

    Raises:
        UsageError: when there is no such version.
    """
    numbers = {version_of_folder(f): f for f in versions}
    if version is not None:
        if version not in numbers:
            raise UsageError(f"model {url} has no version {version} (versions: {sorted(n for n in numbers if n)})")
        return numbers[version]
    exported = [n for n, f in numbers.items() if n and any(o.path == MANIFEST_FILE for o in versions[f])]
    candidates = exported or [n for n in numbers if n]
    if not candidates:
        raise UsageError(f"model {url} has no version")
    return numbers[max(candidates)]


def localize_version(url: StorageUrl, version: int | None, cache_dir: Path) -> Path:
    """Bring a version into `cache_dir` (checked against its manifest) and return its local folder.

    Args:
        url: a model folder (`.../NAME`, the latest version or `version`) or a version folder (`.../NAME/VERSION`).
        version: the version to bring, when `url` is a model folder.
        cache_dir: the cache root (the version lands under its URL's cache key).

    Raises:
        UsageError: for a missing version; StorageError (a UsageError) when the store refuses, VersionRefusedError
            when its files do not match its manifest.
    """
    if version_of_folder(url.name) is not None:
        if version is not None and version_of_folder(url.name) != version:
            raise UsageError(f"{url} is version {url.name}, but --version {version} was asked for")
        model_url, folder = url.parent, url.name
        versions = version_listing(ObjectStorage(model_url))
        if folder not in versions:
            raise UsageError(f"{url} holds no version (nothing there, or an export still writing it)")
    else:
        model_url = url
        versions = version_listing(ObjectStorage(model_url))
        folder = pick_version(url, versions, version)
    model_dir = cache_dir / model_url.cache_key()
    sync_version(ObjectStorage(model_url), folder, versions[folder], model_dir)
    return model_dir / folder


def read_remote_manifest(storage: ObjectStorage, folder: str) -> Manifest:
    """A version's manifest read straight from the store (no download of the version)."""
    try:
        return Manifest.from_json(json.loads(storage.read_bytes(f"{folder}/{MANIFEST_FILE}")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{storage.where(folder)}/{MANIFEST_FILE} is not a valid manifest: {exc!r}") from None

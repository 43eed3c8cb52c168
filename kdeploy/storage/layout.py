"""How a model folder looks in an object store: version folders, the files beside them, and kdeploy's markers."""

from __future__ import annotations

from collections.abc import Iterable

from kdeploy.contract.repository import version_of_folder
from kdeploy.storage.objects import ObjectInfo

FOLDER_MARKER = ".kdeploy-folder"
"""A zero-byte object standing for an empty folder (object stores have none; a SavedModel's empty `assets/` counts in
its manifest digest): publish writes one per empty folder, sync makes the folder and writes no file."""
CLAIM_FILE = ".exporting"
"""Written create-only before an export's first upload, deleted after its manifest: one export per version at a
time, and a folder that holds one is never served (an export is writing it, or stopped before it could clean up)."""


def is_folder_marker(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == FOLDER_MARKER


def _hidden(path: str) -> bool:
    """Hidden objects (a claim, another tool's temporary upload) are no part of a version."""
    return any(part.startswith(".") for part in path.split("/"))


def split_listing(listing: Iterable[ObjectInfo]) -> tuple[dict[str, list[ObjectInfo]], list[ObjectInfo]]:
    """A model folder's listing as its versions (folder -> objects relative to it) and the files beside them.

    Versions that hold an export's claim are left out, and so are hidden objects inside versions.
    """
    versions: dict[str, list[ObjectInfo]] = {}
    model_files: list[ObjectInfo] = []
    claimed: set[str] = set()
    for info in listing:
        folder, sep, rest = info.path.partition("/")
        if not sep:
            if not _hidden(folder):
                model_files.append(info)  # config.pbtxt, batching_parameters.txt
        elif rest == CLAIM_FILE:
            claimed.add(folder)
        elif version_of_folder(folder) is not None and (is_folder_marker(rest) or not _hidden(rest)):
            versions.setdefault(folder, []).append(ObjectInfo(rest, info.size, info.etag, info.modified))
    return {f: files for f, files in versions.items() if f not in claimed}, model_files

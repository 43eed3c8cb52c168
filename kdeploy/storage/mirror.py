"""Keep a local cache of the versions a server wants, polling object-store model folders cheaply and safely.

Each poll lists every model folder once (one LIST request per model and 1,000 objects), decides from that listing
alone which versions are complete, and downloads only the versions the version policy wants that the cache does not
already hold (`kdeploy.storage.sync`). Versions written by kdeploy are complete once their `manifest.json` exists
(export writes it last) and its export's claim is gone; a version without one (written by another tool) once none of
its objects has changed for `settle_seconds`. A failed listing or download changes nothing in the cache, so the
server goes on serving what it has; the error is counted, logged once per change of state, and the next poll comes
after a growing, jittered delay.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kdeploy.common.files import write_bytes_atomic, write_json_atomic
from kdeploy.contract.manifest import MANIFEST_FILE
from kdeploy.contract.repository import version_of_folder
from kdeploy.storage.errors import StorageError
from kdeploy.storage.layout import split_listing
from kdeploy.storage.objects import ObjectInfo, ObjectStorage
from kdeploy.storage.sync import (
    VersionRefusedError,
    is_cached,
    listing_signature,
    read_record,
    record_path,
    remove_cached,
    remove_stale,
    sync_version,
)
from kdeploy.storage.urls import StorageUrl

logger = logging.getLogger(__name__)

MAX_BACKOFF_FACTOR = 8
"""After repeated errors the delay between polls grows up to this many poll intervals."""
MODEL_FILES_FOLDER = "model"
"""The record (`sync.record_path`: `.sync-model.json`) of the files beside a cached model's versions."""
JITTER = 0.2
"""Each delay is stretched or shrunk by up to this fraction, so a fleet of servers does not poll in step."""


class MirrorObserver(Protocol):
    """Where the mirror reports (the server's metrics and model manager)."""

    def poll_error(self, model: str, kind: str) -> None:
        """A listing or download of `model` failed (kind: `kdeploy.storage.errors.ERROR_KINDS`)."""

    def synced(self, model: str, seconds: float, downloaded_bytes: int) -> None:
        """A version of `model` was brought into the cache."""

    def refused(self, model: str, version: int, reason: str) -> None:
        """A version of `model` does not match its manifest and will not be served."""


@dataclass(frozen=True)
class MirroredModel:
    """One model folder in a store and its folder in the cache (what the server loads)."""

    name: str
    url: StorageUrl
    cache_dir: Path
    select: Callable[[list[int]], list[int]] = sorted
    """The version policy: the versions to serve out of the complete ones."""


@dataclass
class _ModelState:
    storage: ObjectStorage | None = None
    error: str | None = None
    """The last error message (logged once per change)."""
    refused: dict[str, tuple[dict, str]] = field(default_factory=dict)
    """Version folder -> (the listing that was refused, why): not downloaded again until the listing changes."""
    unsettled: dict[str, tuple[dict, float]] = field(default_factory=dict)
    """Version folder without a manifest -> (its listing, when that listing was first seen)."""


class RepositoryMirror:
    """Polls object-store model folders into a local cache.

    Args:
        models: the models to mirror.
        observer: receives errors, sync times and refused versions.
        settle_seconds: how long a version without a manifest must stay unchanged before it is served.
        workers: parallel downloads.
        storage_factory: builds the storage of a URL (tests pass their own).
    """

    def __init__(self, models: list[MirroredModel], observer: MirrorObserver | None = None, *,
                 settle_seconds: float = 60.0, workers: int = 8,
                 storage_factory: Callable[[StorageUrl], ObjectStorage] = ObjectStorage) -> None:
        self.models = models
        self._observer = observer
        self._settle = settle_seconds
        self._workers = workers
        self._factory = storage_factory
        self._state = {m.name: _ModelState() for m in models}
        self._lock = threading.Lock()
        self.consecutive_errors = 0
        """Polls in a row with an error in them (drives the backoff)."""

    def poll(self, *, raise_errors: bool = False) -> bool:
        """List every model folder and bring the wanted versions into the cache.

        Args:
            raise_errors: raise the first listing error instead of counting it (start-up: a wrong credential is a
                usage error there).

        Returns:
            Whether the cache changed.
        """
        with self._lock:
            changed, failed = False, False
            for model in self.models:
                try:
                    try:
                        changed |= self._poll_model(model)
                    except OSError as exc:  # the cache's disk (full, read-only): as much a failed poll as the store
                        raise StorageError(f"{model.url}: caching into {model.cache_dir} failed: {exc}") from None
                except StorageError as exc:
                    if raise_errors:
                        raise
                    failed = True
                    self._note_error(model, exc)
                else:
                    self._note_error(model, None)
            self.consecutive_errors = self.consecutive_errors + 1 if failed else 0
            return changed

    def next_delay(self, interval: float, rng: random.Random | None = None) -> float:
        """Seconds until the next poll: the interval, doubled per failed poll in a row (up to 8x), with jitter."""
        factor = min(2 ** max(0, self.consecutive_errors - 1), MAX_BACKOFF_FACTOR) if self.consecutive_errors else 1
        return interval * factor * (1 + (rng or random).uniform(-JITTER, JITTER))

    def _storage(self, model: MirroredModel) -> ObjectStorage:
        state = self._state[model.name]
        if state.storage is None:
            if remove_stale(model.cache_dir):
                logger.info("model %s: removed downloads a stopped process left in %s", model.name, model.cache_dir)
            state.storage = self._factory(model.url)
        return state.storage

    def _poll_model(self, model: MirroredModel) -> bool:
        storage = self._storage(model)
        listing = storage.list_files()
        versions, model_files = split_listing(listing)
        changed = self._sync_model_files(storage, model, model_files)
        complete = {v: f for f, files in versions.items()
                    if (v := version_of_folder(f)) is not None and self._complete(model, f, files)}
        state = self._state[model.name]
        for folder in list(state.refused):
            if folder not in versions or state.refused[folder][0] != listing_signature(versions[folder]):
                del state.refused[folder]  # changed or gone: may be tried again
        while True:  # a refused version leaves the candidates: the policy picks again among the others
            candidates = sorted(v for v, f in complete.items() if f not in state.refused)
            wanted = [complete[v] for v in model.select(candidates)]
            refused = False
            for folder in wanted:
                if not is_cached(model.cache_dir, folder, versions[folder]):
                    refused = not self._sync(storage, model, folder, versions[folder])
                    changed |= not refused
                    if refused:
                        break
            if not refused:
                break
        return self._prune(model, set(wanted)) or changed

    def _sync(self, storage: ObjectStorage, model: MirroredModel, folder: str, files: list[ObjectInfo]) -> bool:
        """Bring one version into the cache; False when it was refused (it does not match its manifest)."""
        try:
            result = sync_version(storage, folder, files, model.cache_dir, workers=self._workers)
        except VersionRefusedError as exc:
            self._state[model.name].refused[folder] = (listing_signature(files), str(exc))
            logger.error("model %s: %s", model.name, exc, extra={"model": model.name})
            if self._observer is not None:
                self._observer.poll_error(model.name, exc.kind)
                self._observer.refused(model.name, version_of_folder(folder) or 0, str(exc))
            return False
        if self._observer is not None:
            self._observer.synced(model.name, result.seconds, result.downloaded_bytes)
        return True

    def _complete(self, model: MirroredModel, folder: str, files: list[ObjectInfo]) -> bool:
        """A version is complete when its manifest is there, or (no manifest) when it has settled."""
        if any(f.path == MANIFEST_FILE for f in files):
            return True
        if is_cached(model.cache_dir, folder, files):
            return True  # settled before (this listing was cached)
        state = self._state[model.name]
        signature = listing_signature(files)
        seen = state.unsettled.get(folder)
        if seen is None or seen[0] != signature:
            state.unsettled[folder] = (signature, time.monotonic())
            seen = state.unsettled[folder]
        newest = max(f.modified for f in files)
        return time.time() - newest >= self._settle or time.monotonic() - seen[1] >= self._settle

    def _sync_model_files(self, storage: ObjectStorage, model: MirroredModel, files: list[ObjectInfo]) -> bool:
        """Mirror the small files beside the versions (Triton's config.pbtxt, batching parameters)."""
        signature = listing_signature(files)
        if read_record(model.cache_dir, MODEL_FILES_FOLDER) == signature:  # ({} for none: nothing to mirror)
            return False
        for info in files:
            write_bytes_atomic(model.cache_dir / info.path, storage.read_bytes(info.path))
        write_json_atomic(record_path(model.cache_dir, MODEL_FILES_FOLDER),
                          {"url": storage.where(), "files": signature})
        return True

    def _prune(self, model: MirroredModel, wanted: set[str]) -> bool:
        """Drop cached versions the policy no longer wants (every wanted one is cached, so the server has what it
        needs; it unloads the dropped ones only once a wanted one serves)."""
        if not model.cache_dir.is_dir():
            return False
        pruned = False
        for path in model.cache_dir.iterdir():
            if path.is_dir() and version_of_folder(path.name) is not None and path.name not in wanted:
                remove_cached(model.cache_dir, path.name)
                logger.info("model %s: version folder %s left the cache (no longer wanted)", model.name, path.name)
                pruned = True
        return pruned

    def _note_error(self, model: MirroredModel, exc: StorageError | None) -> None:
        state = self._state[model.name]
        message = str(exc) if exc is not None else None
        if exc is not None and self._observer is not None:
            self._observer.poll_error(model.name, exc.kind)
        if message == state.error:
            return
        if message is not None:
            logger.error("model %s: polling %s failed, serving what is loaded: %s", model.name, model.url, message,
                         extra={"model": model.name})
        else:
            logger.info("model %s: polling %s works again", model.name, model.url, extra={"model": model.name})
        state.error = message

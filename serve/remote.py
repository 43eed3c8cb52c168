"""Models served from object storage: the mirror that keeps their cache folders current, wired to the server.

The server loads every model from a local folder. For a model whose versions live in an object store, that folder
is its cache (`ModelSource.base_path`), and a `RepositoryMirror` brings the wanted versions into it, checked against
their manifests, before the model manager ever sees them. The mirror polls on a thread of its own, on the remote
interval (`--storage-poll-seconds`, backed off after errors), and asks the model manager to poll the cache as soon as
something arrived, so a new version serves within one remote poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from kdeploy.serve.config import ServeConfig
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import ModelManager
from kdeploy.storage.mirror import MirroredModel, RepositoryMirror
from kdeploy.storage.sync import default_cache_dir

logger = logging.getLogger(__name__)


class MirrorReporter:
    """Mirror events into the server's metrics and model statuses."""

    def __init__(self, metrics: ServerMetrics, models: ModelManager) -> None:
        self._metrics = metrics
        self._models = models

    def poll_error(self, model: str, kind: str) -> None:
        self._metrics.repository_poll_error(model, kind)

    def synced(self, model: str, seconds: float, downloaded_bytes: int) -> None:
        self._metrics.repository_synced(model, seconds)

    def refused(self, model: str, version: int, reason: str) -> None:
        self._models.note_refused(model, version, reason)


def build_mirror(config: ServeConfig, metrics: ServerMetrics, models: ModelManager) -> RepositoryMirror | None:
    """The mirror of the config's object-store models (None when every model is local)."""
    remote = [MirroredModel(s.name, s.url, Path(s.base_path), s.policy.select) for s in config.models
              if s.url is not None]
    if not remote:
        return None
    logger.info("%d models from object storage, cached in %s, listed every %.0f s", len(remote),
                config.cache_dir or default_cache_dir(), config.storage_poll_seconds)
    return RepositoryMirror(remote, MirrorReporter(metrics, models), settle_seconds=config.storage_settle_seconds)


def mirror_forever(mirror: RepositoryMirror, interval: float, stopping: threading.Event,
                   models: ModelManager, on_change: Callable[[], None]) -> None:
    """Poll the stores until the server stops (run in a thread); a change in the cache polls the models at once."""
    while not stopping.wait(mirror.next_delay(interval)):
        try:
            if mirror.poll() and models.poll():
                on_change()
        except Exception:  # a bug in one poll must not end polling (storage errors are handled inside)
            logger.exception("object-storage poll failed")

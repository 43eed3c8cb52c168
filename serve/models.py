"""The models a server holds: which versions are loaded, their state as TF Serving reports it, and their backends."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from export.backends.base import Backend
from export.manifest import Manifest, checksum_problems, read_manifest
from export.repository import version_numbers
from kdeploy.errors import KdeployError
from serve.config import ModelSource
from serve.errors import not_found, unavailable

logger = logging.getLogger(__name__)

BackendLoader = Callable[[Path, Manifest], Backend]
"""Loads a version folder's artifact (for the server's backend) given its manifest."""


class VersionState(enum.IntEnum):
    """TF Serving's ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class ServedVersion:
    """One version of one model and where it is in its lifecycle."""

    name: str
    version: int
    path: Path
    state: VersionState = VersionState.START
    error: str | None = None
    """Why the version failed to load (state END)."""
    manifest: Manifest | None = None
    backend: Backend | None = None
    load_seconds: float = 0.0


class ModelManager:
    """Loads the chosen versions of each model and answers which version serves a request."""

    def __init__(self, sources: list[ModelSource], backend_format: str, load_backend: BackendLoader) -> None:
        self._sources = {s.name: s for s in sources}
        self._format = backend_format
        self._load_backend = load_backend
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, ServedVersion]] = {s.name: {} for s in sources}

    @property
    def model_names(self) -> list[str]:
        return list(self._sources)

    def load_all(self) -> None:
        """Load every version the policies choose; a version that fails is recorded and the others go on."""
        for source in self._sources.values():
            versions = version_numbers(source.base_path)
            for version in source.policy.select(versions):
                self._load(source, version)
            if not versions:
                logger.warning("model %s has no version in %s", source.name, source.base_path)

    def _load(self, source: ModelSource, version: int) -> None:
        served = ServedVersion(source.name, version, source.base_path / str(version))
        with self._lock:
            self._versions[source.name][version] = served
        served.state = VersionState.LOADING
        started = time.perf_counter()
        try:
            manifest = read_manifest(served.path)
            if self._format not in manifest.artifacts:
                reason = manifest.failed_formats.get(self._format, "not exported")
                raise KdeployError(f"version has no {self._format} artifact ({reason})")
            problems = checksum_problems(served.path, manifest, formats=[self._format])
            if problems:
                raise KdeployError("; ".join(problems))
            served.backend = self._load_backend(served.path, manifest)
            served.manifest = manifest
        except Exception as exc:  # any failure leaves this version unloaded and the server running
            served.state = VersionState.END
            served.error = str(exc) or type(exc).__name__
            logger.error("model %s version %d failed to load: %s", source.name, version, served.error)
            return
        served.load_seconds = time.perf_counter() - started
        served.state = VersionState.AVAILABLE
        logger.info("model %s version %d loaded in %.2f s (%s)", source.name, version, served.load_seconds, self._format)

    def statuses(self, name: str, version: int | None = None) -> list[ServedVersion]:
        """The versions the server knows of a model (one, when `version` is given).

        Raises:
            ServeError: NOT_FOUND for an unknown model or version.
        """
        versions = self._model(name)
        if version is None:
            return [versions[v] for v in sorted(versions)]
        if version not in versions:
            raise not_found(f"model {name!r} has no version {version} (versions: {sorted(versions)})")
        return [versions[version]]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ServedVersion:
        """The available version that serves a request: the one asked for, the labelled one, or the latest.

        Raises:
            ServeError: NOT_FOUND for an unknown model, version or label; UNAVAILABLE when it is not loaded.
        """
        versions = self._model(name)
        if label:
            labels = self._sources[name].labels
            if label not in labels:
                raise not_found(f"model {name!r} has no version label {label!r} (labels: {sorted(labels) or 'none'})")
            version = labels[label]
        if version is not None:
            served = versions.get(version)
            if served is None:
                raise not_found(f"model {name!r} has no version {version} (versions: {sorted(versions)})")
            if served.state is not VersionState.AVAILABLE:
                detail = f": {served.error}" if served.error else ""
                raise unavailable(f"model {name!r} version {version} is {served.state.name}{detail}")
            return served
        available = [v for v in sorted(versions) if versions[v].state is VersionState.AVAILABLE]
        if not available:
            known = "; ".join(f"version {v} is {s.state.name}" + (f": {s.error}" if s.error else "")
                              for v, s in sorted(versions.items()))
            raise unavailable(f"model {name!r} has no available version ({known or 'none loaded yet'})")
        return versions[available[-1]]

    def is_ready(self, name: str | None = None) -> bool:
        """Whether a model (or every model) has an available version."""
        names = [name] if name is not None else self.model_names
        with self._lock:
            return all(
                n in self._versions and any(v.state is VersionState.AVAILABLE for v in self._versions[n].values())
                for n in names
            )

    def _model(self, name: str) -> dict[int, ServedVersion]:
        with self._lock:
            versions = self._versions.get(name)
            if versions is None:
                raise not_found(f"model {name!r} is not served here (models: {', '.join(self.model_names)})")
            return dict(versions)

    def close(self) -> None:
        """Unload every version."""
        with self._lock:
            everything = [v for versions in self._versions.values() for v in versions.values()]
        for served in everything:
            if served.backend is not None:
                served.state = VersionState.UNLOADING
                served.backend.close()
                served.backend = None
            served.state = VersionState.END


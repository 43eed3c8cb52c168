"""The models a server holds: which versions are loaded, their state as TF Serving reports it, and their runners.

Lifecycle of a version (TF Serving's states): START → LOADING (manifest, checksum, runtime, warm-up) → AVAILABLE
→ UNLOADING (no new requests; in-flight ones finish) → END. A version that fails to load goes to END with its
error and never replaces a working one. `poll()` brings the loaded set in line with the version policy and the
folders on disk; a new version becomes AVAILABLE before the one it replaces starts UNLOADING, so a roll-out (or
a roll-back) fails no request.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdeploy.common.errors import KdeployError
from kdeploy.contract.manifest import (
    ARTIFACT_PATHS,
    MANIFEST_FILE,
    Manifest,
    bare_artifact_path,
    checksum_problems,
    manifest_of_artifact,
    read_manifest,
)
from kdeploy.contract.repository import version_folders
from kdeploy.contract.signature import ModelSignature, load_data_file, slice_feed
from kdeploy.runtimes.base import Backend, signatures_of
from kdeploy.serve.auto_settings import Choice, choose, prefer_spinning
from kdeploy.serve.batching import Batcher, BatchingParameters, read_batching_parameters
from kdeploy.serve.config import ModelSource
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.model_settings import RuntimeSettings, model_folder_settings
from kdeploy.serve.statistics import VersionStatistics
from kdeploy.serve.triton_config import TRITON_CONFIG_FILE, apply_triton_config
from kdeploy.serve.warmup import WARMUP_FILE, WarmupError, WarmupReplay, replay_warmup, warmup_file
from kdeploy.wire.errors import invalid, not_found, unavailable

logger = logging.getLogger(__name__)

BackendLoader = Callable[[Path, Manifest | None, RuntimeSettings], Backend]
"""Loads a version folder's artifact (for the server's backend) given its manifest (None for a version kdeploy did
not export, whose backend reads the signatures from the artifact) and the runtime settings to load it with (spin_wait
is `on`, `run` or `off` here, never `auto`)."""

WARM_UP_TIMED_RUNS = 5
"""One-row runs timed at warm-up (the fastest counts)."""
ALTERNATED_RUNS = 15
"""Rounds of one-row runs, sleeping and spinning sessions in turn, that decide `spin_wait` auto for a heavier model."""
BATCHING_FILE = "batching_parameters.txt"
"""A model folder may hold its own batching parameters, overriding the server's."""


class VersionState(enum.IntEnum):
    """TF Serving's ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(eq=False)
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
    batcher: Batcher | None = None
    load_seconds: float = 0.0
    stats: VersionStatistics = field(default_factory=VersionStatistics)
    """Triton's ModelStatistics counters of this version (requests and runtime executions)."""
    row_seconds: float = 0.0
    """The runtime's time for one row, measured at warm-up (with the settings it serves with)."""
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    """The runtime settings the version serves with, `auto` resolved (docs/serve/tuning.md)."""
    inline: bool = True
    """Requests run on the event loop (else on the server's threads)."""
    max_batch_size: int = 0
    """Largest batch a request may carry (a Triton config.pbtxt's max_batch_size); 0: no limit."""
    check_shapes: bool = True
    """Whether requests must match the signature's shapes. Off where TF Serving feeds a model the tensors as they
    come and lets the runtime decide (see `feeds_as_given`)."""
    fingerprint: tuple = ()
    """What the folder looked like when it was loaded (a failed version is retried when this changes)."""
    inflight: int = 0
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Guards `state` and `inflight` (a plain lock: taken twice per request)."""
    _drained: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._drained = threading.Condition(self._mutex)

    def loaded(self) -> tuple[Manifest, Backend]:
        """The manifest and runtime of a loaded version (requests only ever reach loaded ones).

        Raises:
            ServeError: UNAVAILABLE when the version is not (or no longer) loaded.
        """
        if self.manifest is None or self.backend is None:
            raise unavailable(f"model {self.name!r} version {self.version} is not loaded")
        return self.manifest, self.backend

    @property
    def signature(self) -> ModelSignature:
        """The loaded version's signature."""
        return self.loaded()[0].signature

    def acquire(self) -> bool:
        """Count a request in, if the version still takes requests."""
        with self._mutex:
            if self.state is not VersionState.AVAILABLE:
                return False
            self.inflight += 1
            return True

    def release(self) -> None:
        with self._mutex:
            self.inflight -= 1
            if self.state is not VersionState.AVAILABLE:  # only `drain` waits, and it changed the state first
                self._drained.notify_all()

    def drain(self, timeout: float) -> bool:
        """Stop taking requests and wait for in-flight ones to finish (True when they did)."""
        with self._drained:
            self.state = VersionState.UNLOADING
            return self._drained.wait_for(lambda: self.inflight == 0, timeout)


def feeds_as_given(backend_format: str, manifest: Manifest) -> bool:
    """Whether a version's runtime takes request tensors in whatever shape they come, as TF Serving feeds them:
    every SavedModel (the graph decides: half_plus_two's `[-1, 1]` placeholder takes `[3]` and answers `[3]`), and a
    TFLite model kdeploy did not export (resized to the request, as TF Serving's TFLite session does). kdeploy's own
    TFLite and every ONNX version keep the exact check and its clear error."""
    return backend_format == "savedmodel" or (backend_format == "tflite" and manifest.discovered)


def alternated_row_seconds(backends: tuple[Backend, ...], feed: dict[str, np.ndarray]) -> tuple[float, ...]:
    """Each backend's fastest one-row run over `ALTERNATED_RUNS` rounds that run them in turn."""
    best = [float("inf")] * len(backends)
    for _ in range(ALTERNATED_RUNS):
        for index, backend in enumerate(backends):
            started = time.perf_counter()
            backend.infer(feed)
            best[index] = min(best[index], time.perf_counter() - started)
    return tuple(best)


def folder_fingerprint(path: Path) -> tuple:
    """Names, sizes and modification times of a version folder's files (cheap: a few files per version)."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class ModelManager:
    """Loads the chosen versions of each model, keeps them in line with the disk, and picks the serving one."""

    def __init__(
        self,
        sources: list[ModelSource],
        backend_format: str,
        load_backend: BackendLoader,
        *,
        batching: BatchingParameters | None = None,
        settings: RuntimeSettings | None = None,
        inline_max_seconds: float = 200e-6,
        metrics: ServerMetrics | None = None,
        drain_seconds: float = 30.0,
    ) -> None:
        """
        Args:
            sources: the models.
            backend_format: the runtime every version loads with (onnx, savedmodel, tflite).
            load_backend: loads one version's artifact with given settings.
            batching: the server's batching parameters (shorthand for `settings` with only batching).
            settings: the server-wide runtime settings, which each model's own settings override.
            inline_max_seconds: one-row runs at most this long make a model tiny (see `auto_settings`).
            metrics: where loads and states are counted.
            drain_seconds: how long an unloading version's in-flight requests may take.
        """
        self._sources = {s.name: s for s in sources}
        self._format = backend_format
        self._load_backend = load_backend
        self._settings = settings if settings is not None else RuntimeSettings(batching=batching)
        self._inline_max_seconds = inline_max_seconds
        self._metrics = metrics
        self._drain_seconds = drain_seconds
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._versions: dict[str, dict[int, ServedVersion]] = {s.name: {} for s in sources}
        self._problems: dict[str, str] = {}
        """Models whose folder offers nothing to load, with the reason (see `_folder_problem`)."""
        if metrics is not None:
            metrics.sample_inflight(self.inflight)
        self._latest: dict[str, ServedVersion] = {}
        """The newest AVAILABLE version of each model, kept current by `_set_state`: what most requests resolve to,
        read without a lock or a sort."""

    @property
    def model_names(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, name: object) -> bool:
        """Whether a model of that name is served now (the set changes when the model config is reloaded)."""
        return name in self._sources

    @property
    def sources(self) -> list[ModelSource]:
        """The models served now, as configured."""
        return list(self._sources.values())

    def reconfigure(self, sources: list[ModelSource]) -> None:
        """Serve exactly these models from now on, as TF Serving's ReloadConfig: new models load, models left out
        unload (after their in-flight requests), and a model whose base path changed is served from the new one;
        policies and labels apply at once. Returns once the new config's versions have loaded or failed.
        """
        wanted = {s.name: s for s in sources}
        with self._poll_lock:
            with self._lock:
                dropped = [name for name in self._versions
                           if name not in wanted or wanted[name].base_path != self._sources[name].base_path]
                gone = [self._versions.pop(name) for name in dropped]
                for name in dropped:
                    self._latest.pop(name, None)
                    self._problems.pop(name, None)
                for name in wanted:
                    self._versions.setdefault(name, {})
                self._sources = wanted
            self._release([served for versions in gone for served in versions.values()])
            for source in sources:
                self._poll_model(source)

    def load_all(self) -> None:
        """The first poll: load what the policies choose."""
        self.poll()

    def poll(self) -> bool:
        """Load new versions, retry changed failed ones, unload those the policy no longer wants.

        Returns:
            Whether anything changed.
        """
        with self._poll_lock:
            changed = False
            for source in self._sources.values():
                changed |= self._poll_model(source)
            return changed

    def _poll_model(self, source: ModelSource) -> bool:
        folders = version_folders(source.base_path)
        on_disk = list(folders)
        # A folder with neither a manifest nor an artifact for this backend is still being written (or is not a
        # version): the policy chooses among the complete ones, so a half-copied newest folder does not leave the
        # model with nothing to serve. A version kdeploy did not export is served from its artifact alone.
        complete = [v for v in on_disk if self._servable(folders[v])]
        wanted = source.policy.select(complete)
        known = self._versions[source.name]
        changed = False
        for version in wanted:
            served = known.get(version)
            if served is not None and served.state in (VersionState.AVAILABLE, VersionState.LOADING):
                continue
            if served is not None and served.error and served.fingerprint == folder_fingerprint(served.path):
                continue  # failed before and nothing changed since: do not retry every poll
            self._load(source, version, folders[version])
            changed = True
        self._note_problem(source, self._folder_problem(source, on_disk, complete))
        # Unload what is no longer wanted, but only once something else can serve (a roll-back keeps the old one
        # answering until the replacement is AVAILABLE).
        serving_wanted = any(known[v].state is VersionState.AVAILABLE for v in wanted if v in known)
        for version, served in sorted(known.items()):
            if version not in wanted and served.state is VersionState.AVAILABLE and (serving_wanted or not on_disk):
                self._unload(served)
                changed = True
        return changed

    def _servable(self, version_dir: Path) -> bool:
        return (version_dir / MANIFEST_FILE).exists() or bare_artifact_path(version_dir, self._format) is not None

    def _folder_problem(self, source: ModelSource, on_disk: list[int], complete: list[int]) -> str | None:
        """Why a model folder offers nothing to load, or None when it holds a version to load."""
        if complete:
            return None
        if source.url is not None:
            return f"no complete version in {source.url} yet (a version is complete once its manifest.json is written)"
        if not source.base_path.is_dir():
            return f"{source.base_path} is not a folder"
        if not on_disk:
            return f"no version folder (a positive integer) in {source.base_path}"
        return (f"no version in {source.base_path} (versions {on_disk}) has a manifest.json or an artifact for "
                f"--backend {self._format} ({ARTIFACT_PATHS[self._format]}): still being copied, or another format")

    def _note_problem(self, source: ModelSource, problem: str | None) -> None:
        """Log a model's folder problem once when it appears or changes, and keep it for status reports."""
        with self._lock:
            previous = self._problems.get(source.name)
            if problem is None:
                self._problems.pop(source.name, None)
            else:
                self._problems[source.name] = problem
        if problem is not None and problem != previous:
            logger.error("model %s cannot be served: %s", source.name, problem, extra={"model": source.name})

    def note_refused(self, name: str, version: int, reason: str) -> None:
        """Show a version that was refused before it reached the model folder (an object-store version whose files
        do not match its manifest) as END with the reason; whatever serves goes on serving."""
        with self._lock:
            known = self._versions.get(name)
            if known is None or (version in known and known[version].state is not VersionState.END):
                return
            known[version] = ServedVersion(name, version, self._sources[name].base_path / str(version),
                                           state=VersionState.END, error=reason)
        if self._metrics is not None:
            self._metrics.version_state.labels(name, str(version)).set(int(VersionState.END))

    def problems(self) -> dict[str, str]:
        """Models that have nothing to serve, with the reason: no version, no artifact, every load failed."""
        with self._lock:
            reasons = dict(self._problems)
            for name, versions in self._versions.items():
                if name in reasons or not versions:
                    continue
                if all(v.state is VersionState.END and v.error for v in versions.values()):
                    reasons[name] = "; ".join(f"version {v.version}: {v.error}" for v in versions.values())
            return reasons

    def _set_state(self, served: ServedVersion, state: VersionState) -> None:
        served.state = state
        with self._lock:
            versions = self._versions.get(served.name, {})
            available = [v for v in sorted(versions) if versions[v].state is VersionState.AVAILABLE]
            if available:
                self._latest[served.name] = versions[available[-1]]
            else:
                self._latest.pop(served.name, None)
        if self._metrics is not None:
            self._metrics.version_state.labels(served.name, str(served.version)).set(int(state))

    def _load(self, source: ModelSource, version: int, folder: Path) -> None:
        served = ServedVersion(source.name, version, folder)
        served.fingerprint = folder_fingerprint(served.path)
        with self._lock:
            previous = self._versions[source.name].get(version)
            self._versions[source.name][version] = served
        self._set_state(served, VersionState.LOADING)
        started = time.perf_counter()
        try:
            settings = self.settings_for(source)
            manifest, backend, choice = self._open_and_choose(source, served, settings)
        except Exception as exc:  # any failure leaves this version unloaded and the server running
            served.error = str(exc) or type(exc).__name__
            self._set_state(served, VersionState.END)
            logger.error("model %s version %d failed to load: %s", source.name, version, served.error,
                         extra={"model": source.name, "version": version})
            return
        served.manifest, served.backend = manifest, backend
        served.check_shapes = not feeds_as_given(self._format, manifest)
        served.inline = choice.inline
        served.settings = dataclasses.replace(settings, spin_wait=choice.spin_wait,
                                              execution="inline" if choice.inline else "thread")
        batching = settings.batching
        if batching is not None:
            served.batcher = Batcher(backend, batching, model=source.name, version=version, metrics=self._metrics,
                                     stats=served.stats)
        served.load_seconds = time.perf_counter() - started
        self._set_state(served, VersionState.AVAILABLE)
        if previous is not None and previous.backend is not None:
            self._close(previous)
        logger.info("model %s version %d loaded and warmed up in %.2f s (%s; %s; %s)", source.name, version,
                    served.load_seconds, self._format, served.settings.describe(), choice.reason,
                    extra={"model": source.name, "version": version, "seconds": round(served.load_seconds, 3)})

    def settings_for(self, source: ModelSource) -> RuntimeSettings:
        """A model's runtime settings (`auto` not yet resolved): the server's, then a batching_parameters.txt in
        the model folder (when batching is on), its kdeploy.toml, and its entry in the server config file.

        Raises:
            UsageError: naming the file and key of a setting that is not valid.
        """
        settings = self._settings
        override = source.base_path / BATCHING_FILE
        if settings.batching is not None and override.is_file():
            settings = dataclasses.replace(settings, batching=read_batching_parameters(override))
        for layer in (model_folder_settings(source.base_path), source.settings):
            if layer is not None:
                settings = layer.apply(settings)
        return settings

    def _open_and_choose(self, source: ModelSource, served: ServedVersion, settings: RuntimeSettings
                         ) -> tuple[Manifest, Backend, Choice]:
        """Load and warm the version, resolve `auto` from the warm-up timing, and load it again when that points
        at spinning threads (a session's spinning is fixed when it is made); with `spin_wait` auto, the faster of
        the two sessions at warm-up is kept."""
        spin = "off" if settings.spin_wait == "auto" else settings.spin_wait
        manifest, backend = self._open(source, served, dataclasses.replace(settings, spin_wait=spin))
        replayed = self._replay_warmup_records(source, served, manifest, backend)
        try:
            if replayed is not None and manifest.discovered:
                # The model's own warm-up requests suit it; generated inputs may not (TF Serving warms up with the
                # records alone).
                served.row_seconds = replayed.fastest_seconds
            else:
                served.row_seconds = self._warm_up(backend, manifest, served.path, settings.batching)
        except Exception as exc:
            if not manifest.discovered:
                backend.close()
                raise
            # Generated inputs may not suit a model kdeploy did not export (a signature over serialized
            # tf.Example strings): serve it unwarmed, on the executor's threads.
            logger.warning("model %s version %d: warm-up on generated inputs failed (%s); serving it unwarmed",
                           source.name, served.version, exc, extra={"model": source.name, "version": served.version})
            served.row_seconds = float("inf")
            return manifest, backend, Choice(spin, inline=False, reason="not warmed up")
        choice = choose(settings, served.row_seconds, inline_max_seconds=self._inline_max_seconds,
                        parallel_runtime=self._format == "onnx")
        if self._format == "onnx" and choice.spin_wait != spin:
            # Spinning pays only where its threads get the cores: time the model both ways on this machine, now.
            asleep = served.row_seconds
            spinning_manifest, spinning = self._open(source, served,
                                                     dataclasses.replace(settings, spin_wait=choice.spin_wait))
            try:
                awake = self._warm_up(spinning, spinning_manifest, served.path, settings.batching)
                if settings.spin_wait == "auto":  # both warm now: time them in alternation, so drift hits both
                    asleep, awake = alternated_row_seconds((backend, spinning), self._one_row(manifest, served.path))
            except Exception:
                spinning.close()
                raise
            if settings.spin_wait == "auto" and not prefer_spinning(asleep, awake):
                spinning.close()
                choice = dataclasses.replace(choice, spin_wait=spin,
                                             reason=f"{choice.reason}; asleep {asleep * 1e6:.0f} µs per row, "
                                                    f"spinning {awake * 1e6:.0f}: asleep")
            else:
                backend.close()
                manifest, backend, served.row_seconds = spinning_manifest, spinning, awake
                if settings.spin_wait == "auto":
                    choice = dataclasses.replace(choice, reason=f"{choice.reason}; asleep {asleep * 1e6:.0f} µs "
                                                                f"per row, spinning {awake * 1e6:.0f}: spinning")
        return manifest, backend, choice

    def _open(self, source: ModelSource, served: ServedVersion, settings: RuntimeSettings
              ) -> tuple[Manifest, Backend]:
        """The version's manifest and its loaded runtime: from `manifest.json`, or from the artifact alone (and the
        model folder's Triton config.pbtxt, when there is one) for a version kdeploy did not export."""
        if not (served.path / MANIFEST_FILE).exists():
            artifact = bare_artifact_path(served.path, self._format)
            if artifact is None:
                raise KdeployError(f"no manifest.json and no {self._format} artifact in {served.path}")
            backend = self._load_backend(served.path, None, settings)
            manifest = manifest_of_artifact(source.name, served.version, served.path, self._format, artifact,
                                            signatures_of(backend))
            config_file = source.base_path / TRITON_CONFIG_FILE
            if config_file.is_file():
                try:
                    manifest, served.max_batch_size = apply_triton_config(manifest, config_file)
                except Exception:
                    backend.close()
                    raise
            return manifest, backend
        manifest = read_manifest(served.path)
        if self._format not in manifest.artifacts:
            reason = manifest.failed_formats.get(self._format, "not exported")
            raise KdeployError(f"version has no {self._format} artifact ({reason})")
        problems = checksum_problems(served.path, manifest, formats=[self._format])
        if problems:
            raise KdeployError("; ".join(problems))
        return manifest, self._load_backend(served.path, manifest, settings)

    def _replay_warmup_records(self, source: ModelSource, served: ServedVersion, manifest: Manifest,
                               backend: Backend) -> WarmupReplay | None:
        """Replay the version's TF Serving warm-up records, if it has any (a failing record fails the load).

        Raises:
            WarmupError: naming the record and why (the runtime is closed first).
        """
        path = warmup_file(served.path)
        if path is None:
            return None
        try:
            replayed = replay_warmup(path, backend, manifest, check_shapes=not feeds_as_given(self._format, manifest))
        except WarmupError:
            backend.close()
            raise
        logger.info("model %s version %d: %d warm-up records replayed from %s", source.name, served.version,
                    replayed.records, WARMUP_FILE, extra={"model": source.name, "version": served.version})
        return replayed

    @staticmethod
    def _one_row(manifest: Manifest, path: Path) -> dict[str, np.ndarray]:
        """A one-row feed: the version's first validation row, or generated values."""
        if manifest.validation_data and (path / manifest.validation_data).is_file():
            feed, _ = load_data_file(path / manifest.validation_data, manifest.signature)
            return slice_feed(feed, 0, 1)
        return manifest.signature.generate_feed(1, np.random.default_rng(0))

    def _warm_up(self, backend: Backend, manifest: Manifest, path: Path, batching: BatchingParameters | None) -> float:
        """Run each batch size the runtime will see once, so no user request pays for lazy initialisation.

        Returns:
            The fastest of a few one-row runs, in seconds (after the first, which initialises).
        """
        sizes = sorted(set(batching.warmup_sizes if batching is not None else ()) | {1})
        feed = None
        if manifest.validation_data and (path / manifest.validation_data).is_file():
            feed, _ = load_data_file(path / manifest.validation_data, manifest.signature)
        row_seconds = float("inf")
        for size in sizes:
            if feed is not None and len(next(iter(feed.values()))) >= size:
                rows = slice_feed(feed, 0, size)
            else:
                rows = manifest.signature.generate_feed(size, np.random.default_rng(0))
            backend.infer(rows)
            for _ in range(WARM_UP_TIMED_RUNS if size == 1 else 0):
                started = time.perf_counter()
                backend.infer(rows)
                row_seconds = min(row_seconds, time.perf_counter() - started)
        return row_seconds

    def _unload(self, served: ServedVersion) -> None:
        drained = served.drain(self._drain_seconds)
        if not drained:
            logger.warning("model %s version %d unloaded with %d requests still in flight", served.name,
                           served.version, served.inflight)
        self._set_state(served, VersionState.UNLOADING)
        self._close(served)
        logger.info("model %s version %d unloaded", served.name, served.version,
                    extra={"model": served.name, "version": served.version})

    def _close(self, served: ServedVersion) -> None:
        if served.batcher is not None:
            served.batcher.close()
            served.batcher = None
        if served.backend is not None:
            served.backend.close()
            served.backend = None
        self._set_state(served, VersionState.END)

    def statuses(self, name: str, version: int | None = None) -> list[ServedVersion]:
        """The versions the server knows of a model (one, when `version` is given).

        Raises:
            ServeError: NOT_FOUND for an unknown model or version.
        """
        versions = self._model(name)
        if version is None:
            if not versions and name in self._problems:
                # Nothing to list: report the model itself as END with the reason, instead of an empty answer.
                return [ServedVersion(name, 0, self._sources[name].base_path, state=VersionState.END,
                                      error=self._problems[name])]
            return [versions[v] for v in sorted(versions)]
        if version not in versions:
            raise not_found(f"Servable not found for request: Specific({name}, {version}): model {name!r} has no "
                            f"version {version} (versions: {sorted(versions)})")
        return [versions[version]]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ServedVersion:
        """The available version that serves a request: the one asked for, the labelled one, or the latest.

        Raises:
            ServeError: NOT_FOUND for an unknown model, version or label; UNAVAILABLE when it is not loaded.
        """
        if version is None and not label:
            latest = self._latest.get(name)
            if latest is not None and latest.state is VersionState.AVAILABLE:
                return latest
        versions = self._model(name)
        if label:
            source = self._sources.get(name)
            labels = source.labels if source is not None else {}
            if label not in labels:
                # TF Serving: INVALID_ARGUMENT (server_core.cc, GetModelVersionForLabel).
                raise invalid(f"Unrecognized servable version label: {label} (model {name!r} has labels "
                              f"{sorted(labels) or 'none'})")
            version = labels[label]
        if version is not None:
            served = versions.get(version)
            if served is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version}): model {name!r} has "
                                f"no version {version} (versions: {sorted(versions)})")
            if served.state is not VersionState.AVAILABLE:
                detail = f": {served.error}" if served.error else ""
                raise unavailable(f"model {name!r} version {version} is {served.state.name}{detail}")
            return served
        available = [v for v in sorted(versions) if versions[v].state is VersionState.AVAILABLE]
        if not available:
            known = "; ".join(f"version {v} is {s.state.name}" + (f": {s.error}" if s.error else "")
                              for v, s in sorted(versions.items()))
            reason = known or self._problems.get(name) or "none loaded yet"
            raise unavailable(f"model {name!r} has no available version ({reason})")
        return versions[available[-1]]

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> ServedVersion:
        """`resolve`, and count the request in so the version is not unloaded under it; `release()` after."""
        for _ in range(3):  # a roll-out may flip the version between resolve and acquire: resolve again
            served = self.resolve(name, version, label)
            if served.acquire():
                return served
        raise unavailable(f"model {name!r} is changing versions; retry")

    def inflight(self) -> dict[str, int]:
        """Requests holding a version of each model right now (the `kdeploy_inflight_requests` gauge)."""
        with self._lock:
            return {name: sum(v.inflight for v in versions.values()) for name, versions in self._versions.items()}

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
                raise not_found(f"Servable not found for request: Latest({name}): model {name!r} is not served here "
                                f"(models: {', '.join(self.model_names)})")
            return dict(versions)

    def close(self) -> None:
        """Unload every version (after its in-flight requests, up to the drain time)."""
        with self._lock:
            everything = [v for versions in self._versions.values() for v in versions.values()]
        self._release(everything)

    def _release(self, versions: list[ServedVersion]) -> None:
        """Unload the available ones (after their in-flight requests); close the runtime of any other that has one."""
        for served in versions:
            if served.state is VersionState.AVAILABLE:
                self._unload(served)
            elif served.backend is not None:
                self._close(served)

"""`kdeploy configs`: configuration files for TF Serving and Triton, generated from the repository's manifests.

One model repository serves all three servers; these files tell TF Serving and Triton what is in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from kdeploy.common.errors import UsageError
from kdeploy.common.files import write_text_atomic
from kdeploy.contract.manifest import MANIFEST_FILE, Manifest, bare_artifact_path, manifest_of_artifact, read_manifest
from kdeploy.contract.repository import ModelRepository, version_of_folder
from kdeploy.runtimes.base import load_backend, signatures_of
from kdeploy.serve.config import BatchingParameters, VersionPolicy
from kdeploy.serve.sources import sources_from_repository
from kdeploy.serve.triton_config import TRITON_CONFIG_FILE, triton_model_config
from kdeploy.storage.urls import StorageUrl
from kdeploy.wire.protos.messages import Protos, load_protos

logger = logging.getLogger(__name__)

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class ConfigsConfig:
    """What to generate."""

    repository: Path | StorageUrl
    """A local repository, or one in an object store (manifests read from it; bare versions downloaded)."""
    out_dir: Path
    models: tuple[str, ...] = ()
    """Default: every model in the repository."""
    base_path: str = "/models"
    """Where the repository is mounted inside the TF Serving container (models at BASE/NAME)."""
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch_size: int = BatchingParameters.max_batch_size
    batch_timeout_micros: int = BatchingParameters.batch_timeout_micros
    max_enqueued_batches: int = BatchingParameters.max_enqueued_batches
    num_batch_threads: int = BatchingParameters.num_batch_threads
    allowed_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    triton_into_repository: bool = False
    """Also write each config.pbtxt into REPO/NAME/, where Triton looks for it."""
    cache_dir: Path | None = None
    """Where versions without a manifest are downloaded from an object store (their runtime reads the signature)."""

    def check(self) -> None:
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            raise UsageError(f"the largest allowed batch size ({self.allowed_batch_sizes[-1]}) must equal "
                             f"--max-batch-size ({self.max_batch_size}), as TF Serving requires")
        if self.max_batch_size < 1 or self.batch_timeout_micros < 0:
            raise UsageError("--max-batch-size must be at least 1 and --batch-timeout-micros not negative")


@dataclass(frozen=True)
class LatestVersion:
    """A model's highest version: its manifest, or None when kdeploy did not export it (a bare artifact)."""

    name: str
    version: int
    folder: Path
    manifest: Manifest | None

    def has(self, fmt: str) -> bool:
        """Whether the version holds an artifact of format `fmt`."""
        if self.manifest is not None:
            return fmt in self.manifest.artifacts
        return bare_artifact_path(self.folder, fmt) is not None

    def described(self, fmt: str) -> Manifest:
        """The manifest, or one read from the bare `fmt` artifact by its runtime."""
        if self.manifest is not None:
            return self.manifest
        path = bare_artifact_path(self.folder, fmt)
        if path is None:
            raise UsageError(f"{self.folder} has no {fmt} artifact")
        backend = load_backend(fmt, self.folder, None, artifact_path=path)
        try:
            return manifest_of_artifact(self.name, self.version, self.folder, fmt, path, signatures_of(backend))
        finally:
            backend.close()


def _latest_versions(repository: Path | StorageUrl, names: tuple[str, ...],
                     cache_dir: Path | None = None) -> list[LatestVersion]:
    """Each model's highest version (every model in the repository, or those named)."""
    if isinstance(repository, StorageUrl):
        return [_latest_remote(repository.child(s.name), cache_dir)
                for s in sources_from_repository(repository, names, VersionPolicy(), cache_dir)]
    repo = ModelRepository(repository)
    latest = []
    for source in sources_from_repository(repository, names, VersionPolicy()):
        version = repo.latest_version(source.name)
        folder = repo.version_dir(source.name, version)
        manifest = read_manifest(folder) if (folder / MANIFEST_FILE).exists() else None
        latest.append(LatestVersion(source.name, version, folder, manifest))
    return latest


def _latest_remote(url: StorageUrl, cache_dir: Path | None) -> LatestVersion:
    """A model's highest version in an object store: its manifest read in place, or (no manifest) the version
    downloaded, so its runtime can read the signature."""
    from kdeploy.storage.localize import localize_version, pick_version, read_remote_manifest, version_listing
    from kdeploy.storage.objects import ObjectStorage
    from kdeploy.storage.sync import default_cache_dir

    storage = ObjectStorage(url)
    versions = version_listing(storage)
    folder = pick_version(url, versions, None)
    version = version_of_folder(folder) or 0
    if any(o.path == MANIFEST_FILE for o in versions[folder]):
        return LatestVersion(url.name, version, Path(folder), read_remote_manifest(storage, folder))
    local = localize_version(url.child(folder), None, cache_dir or default_cache_dir())
    return LatestVersion(url.name, version, local, None)


def _own_triton_config(config: ConfigsConfig, name: str) -> str | None:
    """A model's own config.pbtxt, beside its versions (None when it has none)."""
    if isinstance(config.repository, StorageUrl):
        from kdeploy.storage.objects import ObjectStorage

        storage = ObjectStorage(config.repository.child(name))
        return storage.read_bytes(TRITON_CONFIG_FILE).decode("utf-8") if storage.exists(TRITON_CONFIG_FILE) else None
    own = Path(config.repository) / name / TRITON_CONFIG_FILE
    return own.read_text(encoding="utf-8") if own.is_file() else None


def _write_into_repository(config: ConfigsConfig, name: str, text: str) -> str:
    """Write a model's config.pbtxt beside its versions (uploaded, for an object store); returns where."""
    if isinstance(config.repository, StorageUrl):
        import tempfile

        from kdeploy.storage.objects import ObjectStorage

        storage = ObjectStorage(config.repository.child(name))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / TRITON_CONFIG_FILE
            local.write_text(text, encoding="utf-8")
            storage.upload(local, TRITON_CONFIG_FILE)
        return storage.where(TRITON_CONFIG_FILE)
    target = Path(config.repository) / name / TRITON_CONFIG_FILE
    write_text_atomic(target, text)
    return str(target)


def tfserving_model_config(protos: Protos, models: list[LatestVersion], config: ConfigsConfig) -> str:
    """models.config (ModelServerConfig text format) listing every model's SavedModel base path and policy."""
    message = protos.cls("tensorflow.serving.ModelServerConfig")()
    for model in models:
        if not model.has("savedmodel"):
            logger.warning("model %s has no SavedModel: TF Serving cannot serve it", model.name)
            continue
        entry = message.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = f"{config.base_path.rstrip('/')}/{model.name}"
        entry.model_platform = "tensorflow"
        config.policy.fill_proto(entry.model_version_policy)
    return text_format.MessageToString(message)


def batching_parameters(protos: Protos, config: ConfigsConfig) -> str:
    """batching_parameters.txt (BatchingParameters text format), read by TF Serving and `kdeploy serve`."""
    message = protos.cls("tensorflow.serving.BatchingParameters")()
    message.max_batch_size.value = config.max_batch_size
    message.batch_timeout_micros.value = config.batch_timeout_micros
    message.max_enqueued_batches.value = config.max_enqueued_batches
    message.num_batch_threads.value = config.num_batch_threads
    message.allowed_batch_sizes.extend(config.allowed_batch_sizes)
    message.pad_variable_length_inputs = False
    return text_format.MessageToString(message)


def monitoring_config(protos: Protos) -> str:
    message = protos.cls("tensorflow.serving.MonitoringConfig")()
    message.prometheus_config.enable = True
    message.prometheus_config.path = PROMETHEUS_PATH
    return text_format.MessageToString(message)


def tfserving_readme(config: ConfigsConfig) -> str:
    """How to start tensorflow_model_server on these files (flags and a docker command)."""
    return f"""# TF Serving configuration generated by `kdeploy configs`

Mount the model repository at `{config.base_path}` and this folder at `/config`, then start TF Serving with:

```sh
tensorflow_model_server \\
  --port=8500 \\
  --rest_api_port=8501 \\
  --model_config_file=/config/models.config \\
  --model_config_file_poll_wait_seconds=60 \\
  --enable_batching=true \\
  --batching_parameters_file=/config/batching_parameters.txt \\
  --monitoring_config_file=/config/monitoring.config
```

With Docker:

```sh
docker run --rm -p 8500:8500 -p 8501:8501 \\
  -v "$PWD/REPO:{config.base_path}:ro" -v "$PWD/{config.out_dir.name}/tfserving:/config:ro" \\
  tensorflow/serving:2.20.0 \\
  --model_config_file=/config/models.config --enable_batching=true \\
  --batching_parameters_file=/config/batching_parameters.txt --monitoring_config_file=/config/monitoring.config
```

Prometheus metrics are then at `http://HOST:8501{PROMETHEUS_PATH}`. `kdeploy serve --model-config-file
models.config --enable-batching --batching-parameters-file batching_parameters.txt` reads the same files (with
base paths that point at the repository on its machine).
"""


def write_configs(config: ConfigsConfig) -> list[Path | str]:
    """Write TF Serving's and Triton's configuration for the repository's latest versions.

    Returns:
        The files written (the URL of a config.pbtxt uploaded into an object store).
    """
    config.check()
    protos = load_protos()
    models = _latest_versions(config.repository, config.models, config.cache_dir)
    tfserving = config.out_dir / "tfserving"
    files = {
        tfserving / "models.config": tfserving_model_config(protos, models, config),
        tfserving / "batching_parameters.txt": batching_parameters(protos, config),
        tfserving / "monitoring.config": monitoring_config(protos),
        tfserving / "README.md": tfserving_readme(config),
    }
    written_into: list[str] = []
    for model in models:
        if not model.has("onnx"):
            logger.warning("model %s has no ONNX file: Triton's onnxruntime backend cannot serve it", model.name)
            continue
        own = _own_triton_config(config, model.name) if model.manifest is None else None
        if own is not None:
            # The model came with its own Triton configuration: keep it, and hand Triton a copy of it.
            files[config.out_dir / "triton" / model.name / TRITON_CONFIG_FILE] = own
            continue
        message = triton_model_config(protos, model.described("onnx"), backend_format="onnx", policy=config.policy,
                                      max_batch_size=config.max_batch_size,
                                      max_queue_delay_microseconds=config.batch_timeout_micros)
        text = text_format.MessageToString(message)
        files[config.out_dir / "triton" / model.name / TRITON_CONFIG_FILE] = text
        if config.triton_into_repository:
            written_into.append(_write_into_repository(config, model.name, text))
    for path, text in files.items():
        write_text_atomic(path, text)
    return [*files, *written_into]

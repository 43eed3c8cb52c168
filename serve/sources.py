"""Which models to serve: from a repository folder, or from a TF Serving model config file (models.config)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.serve.model_settings import settings_from_tables
from kdeploy.storage.sync import default_cache_dir
from kdeploy.storage.urls import Location, StorageUrl, is_url, parse_url
from kdeploy.wire.errors import ErrorKind
from kdeploy.wire.protos.messages import load_protos


def sources_from_repository(repository: Location, names: Sequence[str], policy: VersionPolicy,
                            cache_dir: Path | None = None) -> list[ModelSource]:
    """Every model folder in `repository` (or those named), each with the same version policy.

    Args:
        repository: a local folder, or a folder in an object store (listed once, here).
        names: the models to serve (default: all).
        policy: the version policy of each.
        cache_dir: the local cache of object-store models (default: `default_cache_dir()`).

    Raises:
        UsageError: when the repository is missing or a named model is not in it; `StorageError` (a UsageError)
            when the store refuses the listing.
    """
    if isinstance(repository, StorageUrl):
        from kdeploy.storage.objects import ObjectStorage

        present = [n for n in ObjectStorage(repository).list_folders() if not n.startswith(".")]
        chosen = _chosen(names, present, str(repository))
        return [_remote_source(n, repository.child(n), policy, {}, cache_dir) for n in chosen]
    repository = Path(repository)
    if not repository.is_dir():
        raise UsageError(f"model repository {repository} is not a directory")
    present = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    chosen = _chosen(names, present, str(repository))
    return [ModelSource(name=n, base_path=repository / n, policy=policy) for n in chosen]


def _chosen(names: Sequence[str], present: list[str], repository: str) -> list[str]:
    for name in names:
        if name not in present:
            raise UsageError(f"model {name!r} is not in {repository} (models there: {', '.join(present) or 'none'})")
    chosen = list(names) or present
    if not chosen:
        raise UsageError(f"model repository {repository} holds no model folder")
    return chosen


def _remote_source(name: str, url: StorageUrl, policy: VersionPolicy, labels: dict[str, int],
                   cache_dir: Path | None) -> ModelSource:
    """A model in an object store, loaded from its folder in the local cache."""
    return ModelSource(name=name, base_path=(cache_dir or default_cache_dir()) / url.cache_key(), policy=policy,
                       labels=labels, url=url)


class ModelConfigError(UsageError):
    """A ModelServerConfig kdeploy cannot serve, with the gRPC status TF Serving gives the same problem (a reload
    request answers it; `kdeploy serve` exits 2)."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INVALID_INPUT) -> None:
        super().__init__(message)
        self.kind = kind


def read_model_config(path: Path) -> Any:
    """A TF Serving `ModelServerConfig` text file as the message (the server's own protos).

    Raises:
        UsageError: when the file is missing or not a valid ModelServerConfig (TF Serving's words: "Error parsing
            text-format tensorflow.serving.ModelServerConfig").
    """
    path = Path(path)
    protos = load_protos()
    config = protos.cls("tensorflow.serving.ModelServerConfig")()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config, descriptor_pool=protos.pool)
    except FileNotFoundError:
        raise UsageError(f"model config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read model config file {path}: {exc}") from None
    except text_format.ParseError as exc:
        raise UsageError(f"{path} is not a valid TF Serving model config: Error parsing text-format "
                         f"tensorflow.serving.ModelServerConfig: {exc}") from None
    return config


def sources_from_model_config(path: Path, cache_dir: Path | None = None) -> list[ModelSource]:
    """The models of a TF Serving `ModelServerConfig` text file, so one file drives TF Serving and kdeploy.

    Relative base paths are taken relative to the config file's folder; a base path may be an object-store URL
    (`s3://BUCKET/PREFIX/NAME`, as TF Serving reads them), cached under `cache_dir`. A `.toml` file is a kdeploy
    server config (`sources_from_kdeploy_config`).

    Raises:
        UsageError: when the file is missing, not a valid ModelServerConfig, or lists no model kdeploy can serve.
    """
    path = Path(path)
    if path.suffix == ".toml":
        return sources_from_kdeploy_config(path, cache_dir)
    sources = sources_from_config(read_model_config(path), relative_to=path.parent, origin=str(path),
                                  cache_dir=cache_dir)
    if not sources:
        raise UsageError(f"{path} lists no model")
    return sources


def sources_from_config(config: Any, relative_to: Path | None, origin: str,
                        cache_dir: Path | None = None) -> list[ModelSource]:
    """The models of a `ModelServerConfig` message, checked as TF Serving checks a config.

    Args:
        config: the message (from a file, or a HandleReloadConfigRequest).
        relative_to: the folder relative base paths start from; None requires absolute ones (a reload request, as
            TF Serving requires without --model_config_list_root_dir).
        origin: what the config came from, for messages.
        cache_dir: the local cache of object-store models (default: `default_cache_dir()`).

    Raises:
        ModelConfigError: naming the model and the problem (duplicate names, a relative path, another platform).
    """
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError(f"{origin}: ServerModelConfig type not supported. Only ModelConfigList is currently "
                               "supported")
    sources, names = [], set()
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ModelConfigError(f"{origin}: every model config needs a name and a base_path")
        if model.name in names:
            raise ModelConfigError(f"{origin}: Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
        if model.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"{origin}: model {model.name!r} has platform {model.model_platform!r}: "
                                   f"PlatformConfigMap has no entry for platform {model.model_platform} (kdeploy "
                                   "serves tensorflow)", ErrorKind.FAILED_PRECONDITION)
        policy, labels = _policy_from_proto(model.model_version_policy), dict(model.version_labels)
        if is_url(model.base_path):
            sources.append(_remote_source(model.name, parse_url(model.base_path), policy, labels, cache_dir))
            continue
        base = Path(model.base_path)
        if not base.is_absolute():
            if relative_to is None:
                raise ModelConfigError(f"{origin}: Expected model {model.name} to have an absolute path or URI; got "
                                       f"base_path()={model.base_path}")
            base = relative_to / base
        sources.append(ModelSource(name=model.name, base_path=base, policy=policy, labels=labels))
    return sources


def _policy_from_proto(policy) -> VersionPolicy:  # noqa: ANN001 - a ServableVersionPolicy message
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(sorted(policy.specific.versions)))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=max(1, policy.latest.num_versions))
    return VersionPolicy()


def sources_from_kdeploy_config(path: Path, cache_dir: Path | None = None) -> list[ModelSource]:
    """The models of a kdeploy server config: TF Serving's models.config in TOML, with runtime settings per model.

        [[model]]
        name = "wide"
        base_path = "models/wide"        # relative to this file, or an object-store URL
        version_policy = "latest:2"      # latest[:N], all, specific:V[,V]
        version_labels = { stable = 1 }
        [model.runtime]
        spin_wait = true
        [model.batching]
        max_batch_size = 16

    Raises:
        UsageError: one line naming the file, the model and the key for anything not valid.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"model config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"model"})
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}; list models as [[model]] tables")
    models = document.get("model", [])
    if not isinstance(models, list) or not models:
        raise UsageError(f"{path} lists no model (add [[model]] tables with a name and a base_path)")
    sources = []
    for index, entry in enumerate(models):
        where = f"{path}: model {entry.get('name', index + 1)!r}" if isinstance(entry, dict) else f"{path}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: each [[model]] must be a table")
        extra = sorted(set(entry) - set(MODEL_KEYS))
        if extra:
            raise UsageError(f"{where}: unknown key {extra[0]!r}; expected one of {', '.join(MODEL_KEYS)}")
        name, base = entry.get("name"), entry.get("base_path")
        if not isinstance(name, str) or not name or not isinstance(base, str) or not base:
            raise UsageError(f"{where}: every model needs a name and a base_path (strings)")
        try:
            policy = VersionPolicy.parse(str(entry.get("version_policy", "latest")))
        except UsageError as exc:
            raise UsageError(f"{where}: version_policy: {exc}") from None
        labels = entry.get("version_labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, int) and v > 0 for v in labels.values()):
            raise UsageError(f"{where}: version_labels must map labels to version numbers")
        settings = settings_from_tables(entry.get("runtime", {}), entry.get("batching"), where)
        if is_url(base):
            remote = _remote_source(name, parse_url(base), policy, dict(labels), cache_dir)
            sources.append(dataclasses.replace(remote, settings=settings))
            continue
        base_path = Path(base)
        sources.append(ModelSource(name=name, base_path=base_path if base_path.is_absolute() else path.parent / base,
                                   policy=policy, labels=dict(labels), settings=settings))
    return sources


MODEL_KEYS = ("name", "base_path", "version_policy", "version_labels", "runtime", "batching")


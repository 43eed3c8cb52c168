"""Which models to serve: from a repository folder, or from a TF Serving model config file (models.config)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.storage.sync import default_cache_dir
from kdeploy.storage.urls import Location, StorageUrl, is_url, parse_url
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


def sources_from_model_config(path: Path, cache_dir: Path | None = None) -> list[ModelSource]:
    """The models of a TF Serving `ModelServerConfig` text file, so one file drives TF Serving and kdeploy.

    Relative base paths are taken relative to the config file's folder; a base path may be an object-store URL
    (`s3://BUCKET/PREFIX/NAME`, as TF Serving reads them), cached under `cache_dir`.

    Raises:
        UsageError: when the file is missing or not a valid ModelServerConfig.
    """
    path = Path(path)
    protos = load_protos()
    config = protos.cls("tensorflow.serving.ModelServerConfig")()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config, descriptor_pool=protos.pool)
    except FileNotFoundError:
        raise UsageError(f"model config file not found: {path}") from None
    except text_format.ParseError as exc:
        raise UsageError(f"{path} is not a valid TF Serving model config: {exc}") from None
    sources = []
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise UsageError(f"{path}: every model config needs a name and a base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise UsageError(f"{path}: model {model.name!r} has platform {model.model_platform!r}; expected tensorflow")
        policy, labels = _policy_from_proto(model.model_version_policy), dict(model.version_labels)
        if is_url(model.base_path):
            sources.append(_remote_source(model.name, parse_url(model.base_path), policy, labels, cache_dir))
            continue
        base = Path(model.base_path)
        sources.append(ModelSource(
            name=model.name,
            base_path=base if base.is_absolute() else (path.parent / base),
            policy=policy,
            labels=labels,
        ))
    if not sources:
        raise UsageError(f"{path} lists no model")
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

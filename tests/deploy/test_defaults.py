"""Each `kdeploy serve` default is written once (`ServeConfig`); the image and the manifests differ from it only
where a container must, and say the same thing where they both set a value."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from kdeploy.cli import build_parser
from kdeploy.serve.cli import config_from_args
from kdeploy.serve.config import ServeConfig, VersionPolicy

ROOT = Path(__file__).resolve().parents[2]

CONTAINER_OVERRIDES = {
    "KDEPLOY_REPOSITORY": "/models",  # the repository baked into the image (or copied from a volume)
    "KDEPLOY_HOST": "0.0.0.0",  # reachable from outside the container, not loopback only
    "KDEPLOY_INTRA_OP_THREADS": "2",  # k8s: the CPU limit, not the node's cores
    "KDEPLOY_LOG_FORMAT": "json",  # k8s: one JSON object per line for the log collector
    "KDEPLOY_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",  # the GPU image
}
"""The only settings where a container differs from `kdeploy serve`'s defaults, and why."""


def clear_kdeploy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KDEPLOY_")]:
        monkeypatch.delenv(name)


def same_setting(a: str, b: str) -> bool:
    """`2` and `2.0` are the same number of seconds."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def serve_defaults(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`KDEPLOY_<FLAG>` -> the flag's default, as `kdeploy serve --help` would use it (no env vars set)."""
    clear_kdeploy_env(monkeypatch)
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # noqa: SLF001 - argparse internals
    defaults = {}
    for action in serve._actions:  # noqa: SLF001
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags and action.dest != "help":
            value = action.default
            defaults["KDEPLOY_" + flags[0][2:].replace("-", "_").upper()] = (
                ",".join(value) if isinstance(value, list) else str(value))
    return defaults


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def dockerfile_env() -> dict[str, dict[str, str]]:
    """KDEPLOY_* set by ENV in each stage of the Dockerfile."""
    stages: dict[str, dict[str, str]] = {}
    current = ""
    for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if match := re.match(r"FROM \S+ AS (\S+)", line):
            current = match.group(1)
        elif line.startswith("ENV "):
            stages.setdefault(current, {}).update(re.findall(r"(KDEPLOY_\w+)=(\S+)", line))
    return stages


def test_flags_build_the_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_kdeploy_env(monkeypatch)
    (tmp_path / "m").mkdir()
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path)])
    config = config_from_args(args)
    defaults = ServeConfig(models=config.models)
    for field in dataclasses.fields(ServeConfig):
        assert getattr(config, field.name) == getattr(defaults, field.name), field.name
    assert config.models[0].policy == VersionPolicy()


@pytest.mark.parametrize("where", ["k8s/base/server.env", "Dockerfile server", "Dockerfile server-gpu"])
def test_container_settings_are_defaults_or_declared_overrides(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = serve_defaults(monkeypatch)
    settings = env_file(ROOT / where) if where.endswith(".env") else dockerfile_env()[where.split()[1]]
    assert settings
    for key, value in settings.items():
        assert key in defaults, f"{where}: {key} is not a `kdeploy serve` flag"
        if key in CONTAINER_OVERRIDES:
            assert value == CONTAINER_OVERRIDES[key], f"{where}: {key}={value}, elsewhere {CONTAINER_OVERRIDES[key]}"
        else:
            assert same_setting(value, defaults[key]), (
                f"{where}: {key}={value} differs from the flag's default {defaults[key]}; change the default in "
                "ServeConfig or declare the override in CONTAINER_OVERRIDES")

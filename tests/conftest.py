"""Shared fixtures: trained recipes and exported versions, made once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def kdeploy(capsys: pytest.CaptureFixture[str]):
    """Run `kdeploy ARGS...` in-process and return its exit code and output."""
    from kdeploy.cli import main

    def run(*argv: object) -> CliResult:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def digits_trained(tmp_path_factory: pytest.TempPathFactory):
    """The digits recipe trained with its default settings."""
    from train.trainer import TrainConfig, train

    return train(TrainConfig(recipe="digits-cnn", out_dir=tmp_path_factory.mktemp("digits")), write=lambda _: None)


@pytest.fixture(scope="session")
def tabular_trained(tmp_path_factory: pytest.TempPathFactory):
    """The tabular recipe trained with its default settings."""
    from train.trainer import TrainConfig, train

    return train(TrainConfig(recipe="tabular-mlp", out_dir=tmp_path_factory.mktemp("tabular")), write=lambda _: None)


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory, digits_trained, tabular_trained) -> Path:
    """A repository with both recipes exported to every format (and verified)."""
    from export.exporter import ExportConfig, export_model

    repo = tmp_path_factory.mktemp("repo")
    for name, trained in (("digits", digits_trained), ("tabular", tabular_trained)):
        result = export_model(ExportConfig(model_path=trained.model_path, repository=repo, name=name),
                              progress=lambda _: None)
        assert result.ok, result.parity.failures if result.parity else result.failed_formats
    return repo

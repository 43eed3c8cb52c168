"""Shared fixtures: trained recipes and exported versions, made once per test session."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
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
    from kdeploy.train.trainer import TrainConfig, train

    return train(TrainConfig(recipe="digits-cnn", out_dir=tmp_path_factory.mktemp("digits")), write=lambda _: None)


@pytest.fixture(scope="session")
def tabular_trained(tmp_path_factory: pytest.TempPathFactory):
    """The tabular recipe trained with its default settings."""
    from kdeploy.train.trainer import TrainConfig, train

    return train(TrainConfig(recipe="tabular-mlp", out_dir=tmp_path_factory.mktemp("tabular")), write=lambda _: None)


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory, digits_trained, tabular_trained) -> Path:
    """A repository with both recipes exported to every format (and verified)."""
    from kdeploy.export.exporter import ExportConfig, export_model
    from tests.models import text_classifier, two_input_model

    repo = tmp_path_factory.mktemp("repo")
    models = tmp_path_factory.mktemp("models")
    two_input_model().save(models / "two.keras")
    text_classifier().save(models / "text.keras")
    for name, path in (("digits", digits_trained.model_path), ("tabular", tabular_trained.model_path),
                       ("two", models / "two.keras"), ("text", models / "text.keras")):
        result = export_model(ExportConfig(model_path=path, repository=repo, name=name), progress=lambda _: None)
        assert result.ok, result.parity.failures if result.parity else result.failed_formats
    return repo


@dataclass
class ServerProcess:
    """A `kdeploy serve` child process and its addresses."""

    process: subprocess.Popen
    grpc: str
    rest: str | None
    banner: str
    metrics: str | None = None
    _log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Keep reading the server's log: a full pipe would block the server on its next log line.
        self._reader = threading.Thread(target=lambda: self._log.extend(self.process.stderr), daemon=True)
        self._reader.start()

    def log(self) -> str:
        """Everything the server wrote to standard error so far (all of it once it has exited)."""
        if self.process.poll() is not None:
            self._reader.join(10)
        return "".join(self._log)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(10)
        self.process.stdout.close()
        return code


def start_server(*args: object, env: dict[str, str] | None = None, timeout: float = 90.0) -> ServerProcess:
    """Start `kdeploy serve ARGS` on free ports (no drain grace unless ARGS say) and wait for its start-up line."""
    command = [sys.executable, "-m", "kdeploy", "serve", "--grpc-port", "0", "--rest-port", "0", "--metrics-port", "0",
               "--drain-grace-seconds", "0", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    deadline = time.monotonic() + timeout
    banner = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("kdeploy serve:"):
            banner = line.strip()
            break
    if not banner:
        process.kill()
        raise RuntimeError(f"server did not start: {process.communicate(timeout=10)[1]}")
    grpc_address = re.search(r"grpc=(\S+)", banner).group(1)
    rest = re.search(r"rest=(\S+)", banner).group(1)
    metrics = re.search(r"metrics=(\S+)", banner).group(1)
    return ServerProcess(process, grpc_address, None if rest == "off" else rest, banner,
                         None if metrics == "off" else metrics)

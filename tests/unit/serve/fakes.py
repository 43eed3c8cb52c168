"""Fakes for the serving tests: a NumPy `EchoBackend` (like MLServer's `SumModel`), the manager's backend loader,
and version folders with a real `manifest.json` over a dummy artifact. No TensorFlow, no onnxruntime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdeploy.contract.manifest import Artifact, Manifest, describe_artifact, write_manifest
from kdeploy.contract.signature import Feed, ModelSignature, TensorSpec, batch_size
from kdeploy.serve.batching import BatchingParameters
from kdeploy.serve.config import ModelSource, VersionPolicy
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.model_settings import RuntimeSettings
from kdeploy.serve.models import ModelManager

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "float32", (None, 3)),),
    outputs=(TensorSpec("y", "float32", (None, 3)), TensorSpec("z", "float32", (None, 3))),
)
"""One input, two outputs: y = 2x + version, z = 3x + version."""

TWO_INPUTS = ModelSignature(
    inputs=(TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "int32", (None, 2))),
    outputs=(TensorSpec("s", "float32", (None, 2)), TensorSpec("t", "int32", (None, 2))),
)
"""Two inputs, two outputs: s = 2a + version, t = 3b + version."""

ONE_OUTPUT = ModelSignature(inputs=(TensorSpec("x", "float32", (None, 3)),),
                            outputs=(TensorSpec("y", "float32", (None, 3)),))
"""y = 2x + version."""


def echo(signature: ModelSignature, feed: Feed, version: int) -> dict[str, np.ndarray]:
    """Output k is input (k mod inputs) times k + 2, plus the version: an answer tells which version made it."""
    names = signature.input_names
    return {out.name: (np.asarray(feed[names[k % len(names)]]) * (k + 2) + version).astype(out.np_dtype)
            for k, out in enumerate(signature.outputs)}


class EchoBackend:
    """A `Backend` computing `echo`; it can fail on demand, hold calls at a gate, and reports its closing."""

    format = "onnx"

    def __init__(self, signature: ModelSignature, version: int, on_close: Callable[[int], None] | None = None) -> None:
        self.signature = signature
        self.version = version
        self.calls: list[dict[str, np.ndarray]] = []
        """Every feed the backend ran (warm-up included)."""
        self.failing = False
        self.gate: threading.Event | None = None
        """When set to an Event, each call waits for it (after setting `entered`)."""
        self.entered = threading.Event()
        self.closed = threading.Event()
        self._on_close = on_close

    @property
    def rows(self) -> list[int]:
        return [batch_size(feed) for feed in self.calls]

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        self.calls.append(dict(feed))
        self.entered.set()
        if self.gate is not None and not self.gate.wait(5):
            raise TimeoutError("the test never opened the gate")
        if self.failing:
            raise RuntimeError("segfault in libfake.so at 0xdeadbeef")
        return echo(self.signature, feed, self.version)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self.version)
        self.closed.set()


class FakeLoader:
    """The manager's `load_backend(path, manifest)`: an `EchoBackend` per version, or an error for chosen ones."""

    def __init__(self) -> None:
        self.failures: dict[int | tuple[str, int], str] = {}
        """Versions (of any model, or `(model, version)`) that fail to load, with the error message."""
        self.loaded: list[int] = []
        """Versions asked for, in order (failed ones too)."""
        self.closed: list[int] = []
        """Versions whose backend was closed, in order."""
        self.backends: dict[tuple[str, int], EchoBackend] = {}
        """The latest backend made for each (model, version)."""
        self.during_load: Callable[[int], None] | None = None
        """Called with the version while it loads."""
        self.on_close: Callable[[int], None] | None = None
        """Called with the version when its backend closes."""
        self.settings: dict[tuple[str, int], RuntimeSettings | None] = {}
        """The settings each (model, version) was last loaded with."""

    def __call__(self, path: Path, manifest: Manifest, settings: RuntimeSettings | None = None) -> EchoBackend:
        model, version = path.parent.name, int(path.name)
        self.loaded.append(version)
        self.settings[model, version] = settings
        if self.during_load is not None:
            self.during_load(version)
        failure = self.failures.get((model, version), self.failures.get(version))
        if failure is not None:
            raise RuntimeError(failure)
        backend = EchoBackend(manifest.signature, version, on_close=self._closed)
        self.backends[model, version] = backend
        return backend

    def backend(self, version: int, model: str = "m") -> EchoBackend:
        return self.backends[model, version]

    def _closed(self, version: int) -> None:
        self.closed.append(version)
        if self.on_close is not None:
            self.on_close(version)


def write_version(repo: Path, name: str, version: int, signature: ModelSignature = SIGNATURE, *,
                  model_bytes: bytes | None = b"not really onnx", validation: dict[str, np.ndarray] | None = None,
                  failed_formats: dict[str, str] | None = None) -> Path:
    """`REPO/NAME/VERSION` with a dummy `model.onnx` and a manifest whose sha256 matches it.

    `model_bytes=None` writes no ONNX artifact (as when the conversion failed: see `failed_formats`).
    """
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    artifacts = {}
    if model_bytes is not None:
        (folder / "model.onnx").write_bytes(model_bytes)
        artifacts["onnx"] = describe_artifact(folder, "onnx")
    if validation is not None:
        np.savez(folder / "validation.npz", **validation)
    write_manifest(folder, Manifest(name=name, version=version, signature=signature,
                                    source=Artifact("keras", "model.keras", 0, "0" * 64), artifacts=artifacts,
                                    failed_formats=dict(failed_formats or {}),
                                    validation_data="validation.npz" if validation is not None else None))
    return folder


def make_manager(repo: Path, loader: FakeLoader, *names: str, policy: str = "latest:1",
                 labels: dict[str, int] | None = None, batching: BatchingParameters | None = None,
                 metrics: ServerMetrics | None = None, drain_seconds: float = 5.0) -> ModelManager:
    """A manager of the models `names` (default `m`) in `repo`, loading ONNX through `loader`."""
    sources = [ModelSource(name, repo / name, VersionPolicy.parse(policy), dict(labels or {}))
               for name in names or ("m",)]
    return ModelManager(sources, "onnx", loader, batching=batching, metrics=metrics, drain_seconds=drain_seconds)


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `predicate` until it holds, for state the code under test changes without signalling anything."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True

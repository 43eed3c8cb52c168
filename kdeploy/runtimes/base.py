"""The interface every runtime sits behind, and the one place that picks a runtime by format name.

A backend loads one artifact, exposes the signature it serves, runs a feed and returns outputs keyed by the
signature's output names. Parity runs all of them; the server needs only onnxruntime, so each runtime lives
in its own module and is imported only when asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kdeploy.common.native_log import import_tensorflow_quietly
from kdeploy.contract.manifest import ARTIFACT_PATHS
from kdeploy.contract.signature import Feed, ModelSignature

_BACKENDS: dict[str, str] = {
    "keras": "kdeploy.runtimes.keras_backend:KerasBackend",
    "savedmodel": "kdeploy.runtimes.tensorflow_backend:TensorFlowBackend",
    "tflite": "kdeploy.runtimes.tflite_backend:TFLiteBackend",
    "onnx": "kdeploy.runtimes.onnxruntime_backend:OnnxRuntimeBackend",
}


GRAPH_OPTIMIZATIONS: tuple[str, ...] = ("disable", "basic", "extended", "all")
"""onnxruntime's graph optimisation levels, by the names kdeploy's options use (lowest to highest)."""
TENSORFLOW_FORMATS = frozenset({"keras", "savedmodel"})
"""Formats whose runtime loads TensorFlow."""


class Backend(Protocol):
    """A loaded model in one runtime."""

    format: str

    @property
    def signature(self) -> ModelSignature:
        """The signature this backend serves."""
        ...

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        """Run one batch; the feed must already fit the signature."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...


def load_backend(fmt: str, version_dir: Path, signature: ModelSignature | None, *, artifact_path: str | None = None,
                 **options: Any) -> Backend:
    """Load format `fmt` from a version folder with its runtime.

    Args:
        fmt: `keras`, `savedmodel`, `tflite` or `onnx`.
        version_dir: the version folder holding the artifact.
        signature: the manifest's signature, which names the tensors; None to read the signatures from the
            artifact itself (a model kdeploy did not export: see `signatures_of`).
        artifact_path: the artifact's file in the folder, when not the format's default name.
        options: runtime settings for that backend's constructor (threads, providers).
    """
    if fmt in TENSORFLOW_FORMATS:
        import_tensorflow_quietly()
    module_name, _, class_name = _BACKENDS[fmt].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(Path(version_dir) / (artifact_path or ARTIFACT_PATHS[fmt]), signature, **options)


def signatures_of(backend: Backend) -> tuple[ModelSignature, ...]:
    """Every signature a loaded backend serves, its default first (only a SavedModel has several)."""
    return tuple(getattr(backend, "signatures", (backend.signature,)))


def stored_signature_defs(backend: Backend) -> dict[str, bytes]:
    """A SavedModel runtime's SignatureDefs as stored in its MetaGraph (serialized), every one by name; empty for
    runtimes that have none (ONNX, TFLite, Keras)."""
    return dict(getattr(backend, "signature_defs", {}))


def infer_signature(backend: Backend, signature: ModelSignature, feed: Feed) -> dict[str, np.ndarray]:
    """Run `feed` through one of the backend's signatures (the default one through `infer`).

    Raises:
        KeyError: when the backend has no such signature.
    """
    if signature.name == backend.signature.name:
        return backend.infer(feed)
    run = getattr(backend, "infer_signature", None)
    if run is None:
        raise KeyError(f"the {backend.format} runtime serves one signature, {backend.signature.name!r}")
    return run(signature, feed)

"""TFLite backend through LiteRT (`ai_edge_litert`), which replaces the deprecated `tf.lite.Interpreter`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from export.signature import Feed, ModelSignature


class TFLiteBackend:
    """A `.tflite` model run through its `serving_default` signature runner.

    Interpreters are not thread-safe, so calls are serialised; the runner resizes its inputs to each batch.
    """

    format = "tflite"

    def __init__(self, path: Path, signature: ModelSignature, *, num_threads: int | None = None) -> None:
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._runner = self._interpreter.get_signature_runner(signature.name)
        self._signature = signature
        self._lock = threading.Lock()

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        with self._lock:
            outputs = self._runner(**feed)
            # The runner's arrays alias the interpreter's buffers, which the next call overwrites.
            return {name: np.array(outputs[name], copy=True) for name in self._signature.output_names}

    def close(self) -> None:
        self._runner = None
        self._interpreter = None

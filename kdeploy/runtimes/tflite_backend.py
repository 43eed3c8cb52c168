"""TFLite backend through LiteRT (`ai_edge_litert`), which replaces the deprecated `tf.lite.Interpreter`."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from kdeploy.common.native_log import native_stderr_filtered
from kdeploy.contract.signature import Feed, ModelSignature, TensorSpec


class TFLiteBackend:
    """A `.tflite` model run through its `serving_default` signature runner.

    Interpreters are not thread-safe: the backend keeps a pool of them and lends each to one call at a time.
    The signature runner resizes its inputs to each request's batch.
    """

    format = "tflite"

    def __init__(self, path: Path, signature: ModelSignature, *, num_threads: int | None = None,
                 pool_size: int = 1) -> None:
        self._signature = signature
        self._pool: queue.Queue = queue.Queue()
        self._interpreters = []
        for _ in range(max(1, pool_size)):
            interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            runner = interpreter.get_signature_runner(signature.name)
            # LiteRT applies (and announces, on standard error) its CPU delegate at the first call: make that call
            # here, on one row of zeros, with the announcement dropped.
            with native_stderr_filtered():
                runner(**{spec.name: _blank(spec) for spec in signature.inputs})
            self._interpreters.append(interpreter)
            self._pool.put(runner)

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        runner = self._pool.get()
        try:
            outputs = runner(**feed)
            # The runner's arrays alias the interpreter's buffers, which the next call overwrites.
            return {name: np.array(outputs[name], copy=True) for name in self._signature.output_names}
        finally:
            self._pool.put(runner)

    def close(self) -> None:
        self._interpreters = []
        self._pool = queue.Queue()


def _blank(spec: TensorSpec) -> np.ndarray:
    """One row of zeros (empty strings for a string input)."""
    shape = (1, *(d or 1 for d in spec.shape[1:]))
    return np.full(shape, b"", dtype=object) if spec.is_string else np.zeros(shape, spec.np_dtype)

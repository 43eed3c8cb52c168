"""TFLite backend through LiteRT (`ai_edge_litert`), which replaces the deprecated `tf.lite.Interpreter`."""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from kdeploy.common.native_log import native_stderr_filtered
from kdeploy.contract.signature import DEFAULT_SIGNATURE, Feed, ModelSignature, TensorSpec, dtype_by_name
from kdeploy.runtimes.tflite_signature_defs import StoredSignature, tflite_signature_defs


class TFLiteBackend:
    """A `.tflite` model run through its signature runner (`serving_default`, or the model's only signature), or
    through its plain input and output tensors when it has no signature (older converters wrote none). A model
    that carries TensorFlow SignatureDefs in its metadata (as TF Serving's `..._tflite_with_sigdef` test model) is
    served with their keys, as TF Serving serves it: each key feeds or fetches the tensor its SignatureDef names.

    Interpreters are not thread-safe: the backend keeps a pool of them and lends each to one call at a time.
    The runner resizes its inputs to each request's batch.
    """

    format = "tflite"

    def __init__(self, path: Path, signature: ModelSignature | None, *, num_threads: int | None = None,
                 pool_size: int = 1) -> None:
        self._pool: queue.Queue = queue.Queue()
        self._interpreters = []
        stored = tflite_signature_defs(path)
        if signature is not None and signature.name not in stored:
            stored = {}  # the manifest's signature is the model's own TFLite signature
        for _ in range(max(1, pool_size)):
            interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            if stored:
                found, runner = _stored_signature_runner(interpreter, stored, signature.name if signature else None)
                signature = signature or found
            else:
                if signature is None:
                    signature = signature_of_interpreter(interpreter)
                runner = _runner(interpreter, signature.name)
            # LiteRT applies (and announces, on standard error) its CPU delegate at the first call: make that call
            # here, on one row of zeros, with the announcement dropped.
            with native_stderr_filtered():
                runner(**{spec.name: _blank(spec) for spec in signature.inputs})
            self._interpreters.append(interpreter)
            self._pool.put(runner)
        assert signature is not None  # the loop ran at least once
        self._signature = signature

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


Runner = Callable[..., Mapping[str, np.ndarray]]


def signature_of_interpreter(interpreter: Interpreter) -> ModelSignature:
    """The signature a `.tflite` file declares (`serving_default`, else its first), or its plain tensors."""
    keys = interpreter.get_signature_list()
    if keys:
        key = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in keys else sorted(keys)[0]
        runner = interpreter.get_signature_runner(key)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        return ModelSignature(inputs=tuple(_spec(n, inputs[n]) for n in keys[key]["inputs"]),
                              outputs=tuple(_spec(n, outputs[n]) for n in keys[key]["outputs"]), name=key)
    return ModelSignature(inputs=tuple(_spec(d["name"], d) for d in interpreter.get_input_details()),
                          outputs=tuple(_spec(d["name"], d) for d in interpreter.get_output_details()),
                          name=DEFAULT_SIGNATURE)


def _spec(name: str, details: Mapping[str, Any]) -> TensorSpec:
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    dtype = "string" if np.dtype(details["dtype"]).kind in "OSU" else np.dtype(details["dtype"]).name
    return TensorSpec(name, dtype_by_name(dtype).name, tuple(None if int(d) < 0 else int(d) for d in shape))


def _stored_signature_runner(interpreter: Interpreter, stored: Mapping[str, StoredSignature], key: str | None
                             ) -> tuple[ModelSignature, Runner]:
    """A SignatureDef of the model's metadata (`key`, or by default `serving_default`, else the first), over the
    tensors it names: its keys are the signature's names, each tensor's dtype and shape the interpreter's.

    Raises:
        KeyError: when the SignatureDef names a tensor the model does not have.
    """
    if key is None:
        key = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in stored else sorted(stored)[0]
    definition = stored[key]
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    for names, tensors in ((definition.inputs, inputs), (definition.outputs, outputs)):
        missing = sorted(t for t in names.values() if t not in tensors)
        if missing:
            raise KeyError(f"signature {key!r} in the model's metadata names tensors {missing}, which the model "
                           f"does not have (it has {sorted(tensors)})")
    signature = ModelSignature(
        inputs=tuple(_spec(k, inputs[definition.inputs[k]]) for k in sorted(definition.inputs)),
        outputs=tuple(_spec(k, outputs[definition.outputs[k]]) for k in sorted(definition.outputs)), name=key)
    by_tensor = _runner_over_tensors(interpreter)

    def run(**feed: np.ndarray) -> dict[str, np.ndarray]:
        values = by_tensor(**{definition.inputs[k]: v for k, v in feed.items()})
        return {k: values[tensor] for k, tensor in definition.outputs.items()}

    return signature, run


def _runner(interpreter: Interpreter, key: str) -> Runner:
    """The signature runner for `key`, or one over the plain tensors for a model without signatures."""
    if interpreter.get_signature_list():
        return interpreter.get_signature_runner(key)
    return _runner_over_tensors(interpreter)


def _runner_over_tensors(interpreter: Interpreter) -> Runner:
    """A runner feeding and fetching the model's input and output tensors by name, resized to each feed."""
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}

    def run(**feed: np.ndarray) -> dict[str, np.ndarray]:
        for name, value in feed.items():
            interpreter.resize_tensor_input(inputs[name], value.shape, strict=False)
        interpreter.allocate_tensors()
        for name, value in feed.items():
            interpreter.set_tensor(inputs[name], value)
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in outputs.items()}

    return run

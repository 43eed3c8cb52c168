"""onnxruntime backend (must never import TensorFlow: the server image has none)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdeploy.contract.signature import Feed, ModelSignature, TensorSpec, dtype_by_onnx
from kdeploy.runtimes.base import GRAPH_OPTIMIZATIONS

logger = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = dict(zip(GRAPH_OPTIMIZATIONS, (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
), strict=True))


SPIN_MODES = ("on", "run", "off")


class OnnxRuntimeBackend:
    """An ONNX model in an onnxruntime InferenceSession (thread-safe: one session serves all threads)."""

    format = "onnx"

    def __init__(
        self,
        path: Path,
        signature: ModelSignature | None,
        *,
        intra_op_threads: int = 0,
        spin_wait: bool | str = True,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        graph_optimization: str = "all",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization]
        options.log_severity_level = 3
        # onnxruntime's own default is to spin; the server chooses per model (see ServeConfig.spin_wait): `run`
        # spins between the parallel sections of a run and stops when the last run in flight returns.
        mode = ("on" if spin_wait else "off") if isinstance(spin_wait, bool) else spin_wait
        if mode not in SPIN_MODES:
            raise ValueError(f"spin_wait {spin_wait!r}: expected one of {', '.join(SPIN_MODES)} or a bool")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if mode == "off" else "1")
        options.add_session_config_entry("session.force_spinning_stop", "1" if mode == "run" else "0")
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        for missing in (p for p in providers if p not in available):
            logger.warning("onnxruntime provider %s is not available here; using %s", missing, chosen or "CPU")
        self._session = ort.InferenceSession(str(path), options, providers=chosen or ["CPUExecutionProvider"])
        self._signature = signature if signature is not None else signature_of_session(self._session)
        self._output_names = self._signature.output_names

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the session runs with (threads, spinning), as onnxruntime reports them."""
        return self._session.get_session_options()

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None


def signature_of_session(session: ort.InferenceSession) -> ModelSignature:
    """The signature an ONNX graph declares: its inputs and outputs with their types, symbolic dimensions dynamic.

    Raises:
        SignatureError: for a type kdeploy does not handle, or a scalar (no batch dimension).
    """
    def spec(arg: ort.NodeArg) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
        return TensorSpec(arg.name, dtype_by_onnx(arg.type).name, shape)

    return ModelSignature(inputs=tuple(spec(a) for a in session.get_inputs()),
                          outputs=tuple(spec(a) for a in session.get_outputs()))

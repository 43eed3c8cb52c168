"""onnxruntime backend (must never import TensorFlow: the server image has none)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdeploy.contract.signature import Feed, ModelSignature
from kdeploy.runtimes.base import GRAPH_OPTIMIZATIONS

logger = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = dict(zip(GRAPH_OPTIMIZATIONS, (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
), strict=True))


class OnnxRuntimeBackend:
    """An ONNX model in an onnxruntime InferenceSession (thread-safe: one session serves all threads)."""

    format = "onnx"

    def __init__(
        self,
        path: Path,
        signature: ModelSignature,
        *,
        intra_op_threads: int = 0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        graph_optimization: str = "all",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization]
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        for missing in (p for p in providers if p not in available):
            logger.warning("onnxruntime provider %s is not available here; using %s", missing, chosen or "CPU")
        self._session = ort.InferenceSession(str(path), options, providers=chosen or ["CPUExecutionProvider"])
        self._signature = signature
        self._output_names = signature.output_names

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None

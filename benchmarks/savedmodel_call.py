"""Per-call time of the savedmodel backend's two ways to run a signature, alternated in one process (A/B).

`session`: the backend (`kdeploy.runtimes.tensorflow_backend`): the MetaGraph in a session, the signature a C++
callable fed by tensor names, as TF Serving runs it. `function`: the signature function of `tf.saved_model.load`,
which the backend used before. Models: a Keras MLP (30 -> 64 -> 1, `model.export`) and TF Serving's TF2
half_plus_two. Prints the median microseconds per one-row call of each, over alternating rounds of 1,000 calls.

    .venv/bin/python benchmarks/savedmodel_call.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROUNDS, CALLS = 6, 1000
HALF_PLUS_TWO = (Path(__file__).resolve().parents[1] / "tests" / "data" / "tfserving" / "testdata"
                 / "saved_model_half_plus_two_tf2_cpu" / "00000123")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from kdeploy.runtimes.tensorflow_backend import TensorFlowBackend

    mlp = Path(tempfile.mkdtemp(prefix="kdeploy-bench-")) / "mlp"
    model = keras.Sequential([keras.Input((30,), name="x"), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model(np.zeros((1, 30), np.float32))
    model.export(str(mlp), verbose=False)
    cases = {"keras mlp": (mlp, np.random.default_rng(0).random((1, 30), dtype=np.float32)),
             "tf2 half_plus_two": (HALF_PLUS_TWO, np.array([2.0], np.float32))}
    for name, (path, value) in cases.items():
        backend = TensorFlowBackend(path / "saved_model.pb", None)
        function = tf.saved_model.load(str(path)).signatures["serving_default"]
        medians = _medians(backend, function, backend.signature.input_names[0], value)
        print(f"{name}: session {medians['session']:.1f} us, function {medians['function']:.1f} us per call "
              f"(function/session {medians['function'] / medians['session']:.2f})")
        backend.close()


def _medians(backend, function, key: str, value: np.ndarray) -> dict[str, float]:
    """Median microseconds per call of each way, over rounds alternating which goes first."""
    import tensorflow as tf

    runs = {"session": lambda: backend.infer({key: value}),
            "function": lambda: {k: v.numpy() for k, v in function(**{key: tf.convert_to_tensor(value)}).items()}}
    for run in runs.values():
        for _ in range(50):
            run()
    micros: dict[str, list[float]] = {label: [] for label in runs}
    for index in range(ROUNDS):
        for label in (list(runs) if index % 2 == 0 else list(reversed(runs))):
            started = time.perf_counter()
            for _ in range(CALLS):
                runs[label]()
            micros[label].append((time.perf_counter() - started) / CALLS * 1e6)
    return {label: statistics.median(values) for label, values in micros.items()}

if __name__ == "__main__":
    main()

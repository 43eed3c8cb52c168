"""The SavedModels TF Serving's tests write themselves (`test_tf_saved_model_save` and the Keras cases), written
the same way, in a child process: `python -m tests.tfserving.saved_models BASE KIND...` writes `BASE/KIND/00000123`.

A child process because the tf.distribute case needs two virtual CPUs, which TensorFlow only lets a process
configure before it first uses its devices (the test process may already have); one for all the other kinds, so
TensorFlow is imported once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KINDS = ("tf_saved_model_save", "multiple_signatures", "keras_sequential", "keras_distributed")


def write(base: Path, *kinds: str) -> subprocess.CompletedProcess[str]:
    """Write the SavedModels of `kinds` to `BASE/KIND/00000123` in one child process."""
    return subprocess.run([sys.executable, "-m", "tests.tfserving.saved_models", str(base), *kinds],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=Path(__file__).resolve().parents[2])


def _main(kind: str, export_path: str) -> None:
    import tensorflow as tf

    if kind == "tf_saved_model_save":  # y = v1 * v2 * x, x of unknown shape
        root = tf.train.Checkpoint()
        root.v1 = tf.Variable(3.)
        root.v2 = tf.Variable(2.)
        root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
        tf.saved_model.save(root, export_path, root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    elif kind == "multiple_signatures":  # constant scalar outputs 1.0 and 2.0
        root = tf.train.Checkpoint()
        root.f = tf.function(lambda x: {"y": 1.}, input_signature=[tf.TensorSpec(None, tf.float32)])
        root.g = tf.function(lambda x: {"y": 2.}, input_signature=[tf.TensorSpec(None, tf.float32)])
        tf.saved_model.save(root, export_path, signatures={"serving_default": root.f, "custom_signature_key": root.g})
    elif kind in ("keras_sequential", "keras_distributed"):
        if kind == "keras_distributed":  # upstream's SetVirtualCpus(2) and a MirroredStrategy over them
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
            scope = tf.distribute.MirroredStrategy(devices=("/cpu:0", "/cpu:1")).scope()
        else:
            scope = tf.name_scope("keras")
        with scope:
            model = tf.keras.models.Sequential()
            model.add(tf.keras.layers.Input(dtype="float32", shape=(1,), name="x"))
            if kind == "keras_distributed":
                model.add(tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"))
            model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
        tf.saved_model.save(model, export_path)
    else:
        raise SystemExit(f"unknown kind {kind!r}; choose from {KINDS}")


if __name__ == "__main__":
    for name in sys.argv[2:]:
        _main(name, str(Path(sys.argv[1]) / name / "00000123"))

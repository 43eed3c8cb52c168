"""Models kdeploy did not write, as users bring them: a SavedModel from `tf.saved_model.save`, an ONNX graph made
with `onnx.helper` (Triton's layout), a `.tflite` file from TensorFlow's converter. No manifest.json anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], dtype=np.float32)
BIAS = np.array([0.1, -0.2], dtype=np.float32)


def half_plus_two(x: np.ndarray) -> np.ndarray:
    """What `write_half_plus_two` computes (TF Serving's own test model)."""
    return 0.5 * x + 2.0


def write_half_plus_two(folder: Path) -> Path:
    """A SavedModel written by `tf.saved_model.save`: `serving_default` y = 0.5x + 2 on x [-1, 1] (a variable holds
    0.5) and `times_three` y = 3x, as TF Serving's saved_model_half_plus_two."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def times_three(self, x):
            return {"y": 3.0 * x}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve,
                                                          "times_three": module.times_three})
    return folder


def linear(x: np.ndarray) -> np.ndarray:
    """What `write_linear_onnx` computes."""
    return x @ WEIGHTS + BIAS


def write_linear_onnx(path: Path, input_name: str = "features", output_name: str = "scores") -> Path:
    """An ONNX graph y = xW + b with a symbolic batch dimension (`N`), written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], [output_name])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tflite_from_savedmodel(saved_model: Path, path: Path) -> Path:
    """TensorFlow's converter on a SavedModel (its `serving_default` becomes the file's signature)."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
    return path


def write_elementwise_onnx(path: Path, elem_type: str, op: str = "Add", constant: float = 1.0) -> Path:
    """An ONNX graph `y = x OP c` on `x` of shape [N, 4] and ONNX element type `elem_type` (`INT64`, `FLOAT16`, ...),
    for serving dtypes the recipes do not produce."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind = getattr(TensorProto, elem_type)
    value = np.array(constant, dtype=helper.tensor_dtype_to_np_dtype(kind))
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "c"], ["y"])], f"{op.lower()}_{elem_type.lower()}",
        [helper.make_tensor_value_info("x", kind, ["N", 4])], [helper.make_tensor_value_info("y", kind, ["N", 4])],
        initializer=[numpy_helper.from_array(value, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

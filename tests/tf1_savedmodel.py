"""A TF1-style SavedModel with several signatures, written with `tf.compat.v1.saved_model.Builder`: what an
Estimator export (or any pre-Keras graph) looks like to a model server.

`write_tf1_savedmodel(path)` writes it to `path` (which must not exist: `REPO/NAME/VERSION`). Signatures:

| name | method | inputs | outputs |
|---|---|---|---|
| `serving_default` | predict | `x` float32 [-1, 3] | `y` float32 [-1, 2] (x @ W + b) |
| `classify` | classify | `inputs` string [-1] (serialized tf.Examples) | `classes` string, `scores` float32 [-1, 3] |
| `scores_only` | classify | as `classify` | `scores` |
| `classes_only` | classify | as `classify` | `classes` |
| `regress` | regress | as `classify` | `outputs` float32 [-1, 1] |

The tf.Example features are `x` (3 floats, required) and `n` (one int64, default 0): the classifier's logits are
`x @ C + n * 0.25`, its classes the constant labels `LABELS` in every row; the regression is `x · r + n`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ("cat", "dog", "fish")
SIGNATURE_NAMES = ("serving_default", "classify", "scores_only", "classes_only", "regress")
METHODS = {"serving_default": "predict", "classify": "classify", "scores_only": "classify",
           "classes_only": "classify", "regress": "regress"}


def write_tf1_savedmodel(path: Path) -> Path:
    """Write the SavedModel (graph mode, variables, several signature defs) into the new folder `path`.

    Returns:
        `path`.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(11)
    weights = rng.standard_normal((3, 2)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    class_weights = rng.standard_normal((3, len(LABELS))).astype(np.float32)
    regression_weights = rng.standard_normal((3, 1)).astype(np.float32)

    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.Variable(weights, name="w")
        b = v1.Variable(bias, name="b")
        y = tf.identity(tf.matmul(x, w) + b, name="y")

        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([3], tf.float32),
            "n": tf.io.FixedLenFeature([1], tf.int64, default_value=[0]),
        })
        n = tf.cast(features["n"], tf.float32)
        logits = tf.matmul(features["x"], v1.Variable(class_weights, name="c")) + 0.25 * n
        scores = tf.nn.softmax(logits, name="scores")
        classes = tf.tile(tf.constant([list(LABELS)]), [tf.shape(serialized)[0], 1], name="classes")
        regression = tf.identity(tf.matmul(features["x"], v1.Variable(regression_weights, name="r")) + n,
                                 name="regression")

        session.run(v1.global_variables_initializer())
        signatures = v1.saved_model.signature_def_utils
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING], signature_def_map={
            "serving_default": signatures.predict_signature_def({"x": x}, {"y": y}),
            "classify": v1.saved_model.classification_signature_def(serialized, classes, scores),
            "scores_only": v1.saved_model.classification_signature_def(serialized, None, scores),
            "classes_only": v1.saved_model.classification_signature_def(serialized, classes, None),
            "regress": v1.saved_model.regression_signature_def(serialized, regression),
        })
        builder.save()
    return Path(path)


def example_bytes(x: np.ndarray, n: list[int] | None = None) -> list[bytes]:
    """Serialized tf.Examples (with TensorFlow's own protos) of rows `x` and, when given, `n`."""
    import tensorflow as tf

    out = []
    for i, row in enumerate(np.asarray(x, dtype=np.float32)):
        feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist()))}
        if n is not None:
            feature["n"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[n[i]]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def tf_outputs(path: Path, signature: str, **inputs: object) -> dict[str, np.ndarray]:
    """Run one signature of the SavedModel in TensorFlow itself: the reference the server's answers must match."""
    import tensorflow as tf

    function = tf.saved_model.load(str(path)).signatures[signature]
    # Lists of bytes, not NumPy "S" arrays, which drop the trailing NUL bytes a serialized tf.Example may end with.
    return {name: value.numpy() for name, value in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

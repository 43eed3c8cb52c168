"""Small Keras models built by tests: shapes a user brings (several named inputs and outputs, token ids, RNNs)."""

from __future__ import annotations

import numpy as np


def two_input_model():
    """Functional: inputs `pixels` (6 floats) and `meta` (3 floats); outputs `label` (softmax 4) and `score`."""
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((6,), name="pixels")
    meta = keras.Input((3,), name="meta")
    h = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(image), meta])
    label = keras.layers.Dense(4, activation="softmax", name="label")(h)
    score = keras.layers.Dense(1, name="score")(h)
    model = keras.Model({"pixels": image, "meta": meta}, {"label": label, "score": score})
    model.predict({"pixels": np.zeros((1, 6)), "meta": np.zeros((1, 3))}, verbose=0)
    return model


def text_classifier(length: int | None = 12, vocabulary: int = 200):
    """Embedding + LSTM over int32 token ids, one sigmoid output `positive`."""
    import keras

    keras.utils.set_random_seed(4)
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocabulary, 16)(tokens)
    h = keras.layers.LSTM(16)(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="positive")(h)
    return keras.Model(tokens, out)


def multi_signature_savedmodel(path):
    """A SavedModel written by `tf.saved_model.save` of a `tf.Module` (no Keras), with four signatures:

    - `serving_default`: `features` (float32 [-1, 4]) -> `logits` [-1, 3];
    - `scaled`: `values` (float32 [-1, 4]) and `scale` (float32 [-1, 1]) -> `probabilities` (softmax) and `raw`;
    - `parse_examples`: `examples` (serialized tf.Example, string [-1]) -> `out` [-1, 3] (feature `f`: 4 floats);
    - `fixed_batch`: `x` (float32 [2, 4]) -> `y`: no dynamic batch, which kdeploy refuses.
    """
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(5)
            self.w = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
            self.b = tf.Variable(rng.normal(size=3).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def score(self, features):
            return {"logits": tf.matmul(features, self.w) + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 1], tf.float32)])
        def scaled(self, values, scale):
            raw = (tf.matmul(values, self.w) + self.b) * scale
            return {"probabilities": tf.nn.softmax(raw), "raw": raw}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def parse_examples(self, examples):
            parsed = tf.io.parse_example(examples, {"f": tf.io.FixedLenFeature([4], tf.float32)})
            return {"out": tf.matmul(parsed["f"], self.w)}

        @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32)])
        def fixed_batch(self, x):
            return {"y": tf.matmul(x, self.w)}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.score, "scaled": module.scaled, "parse_examples": module.parse_examples,
        "fixed_batch": module.fixed_batch,
    })
    return path


def keras2_h5(path):
    """An HDF5 model laid out the way tf.keras 2.x (Keras 2) writes it, with h5py: `model_config` with
    `batch_input_shape`, string dtypes and nested-list inbound nodes; weights named `dense/kernel:0`.

    Functional: `features` (4 floats) -> Dense(8, relu) -> `probabilities` (Dense(3, softmax)). Returns the path
    and a NumPy function computing the same outputs.
    """
    import json

    import h5py

    rng = np.random.default_rng(6)
    weights = {"dense": (rng.normal(size=(4, 8)), rng.normal(size=8)),
               "probabilities": (rng.normal(size=(8, 3)), rng.normal(size=3))}

    def dense(name, units, activation, inbound):
        config = {"name": name, "trainable": True, "dtype": "float32", "units": units, "activation": activation,
                  "use_bias": True, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                  "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
                  "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
                  "bias_constraint": None}
        return {"class_name": "Dense", "config": config, "name": name, "inbound_nodes": [[[inbound, 0, 0, {}]]]}

    model_config = {"class_name": "Functional", "config": {"name": "model", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32", "sparse": False,
                                                "ragged": False, "name": "features"},
         "name": "features", "inbound_nodes": []},
        dense("dense", 8, "relu", "features"), dense("probabilities", 3, "softmax", "dense")],
        "input_layers": [["features", 0, 0]], "output_layers": [["probabilities", 0, 0]]}}
    with h5py.File(path, "w") as file:
        file.attrs.update({"keras_version": "2.15.0", "backend": "tensorflow",
                           "model_config": json.dumps(model_config)})
        group = file.create_group("model_weights")
        group.attrs.update({"keras_version": "2.15.0", "backend": "tensorflow",
                            "layer_names": [b"features", b"dense", b"probabilities"]})
        group.create_group("features").attrs["weight_names"] = np.array([], dtype="S1")
        for name, (kernel, bias) in weights.items():
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            layer[f"{name}/kernel:0"] = kernel.astype(np.float32)
            layer[f"{name}/bias:0"] = bias.astype(np.float32)

    def predict(x):
        hidden = np.maximum(x @ weights["dense"][0] + weights["dense"][1], 0.0)
        logits = hidden @ weights["probabilities"][0] + weights["probabilities"][1]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return path, predict

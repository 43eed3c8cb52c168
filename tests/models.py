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

"""The built-in recipes: `digits-cnn` and `tabular-mlp`, both on scikit-learn's bundled data sets."""

from __future__ import annotations

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.train.recipes import Dataset, Recipe


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1,797 images, pixel values 0..16, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    return Dataset(x=data.images.astype(np.float32), y=data.target.astype(np.int64),
                   description="scikit-learn digits (1,797 8x8 images, 10 classes)")


def prepare_images(x: np.ndarray) -> np.ndarray:
    """Images as (N, H, W, 1) float32: a flat 64-pixel row becomes 8x8, a missing channel axis is added."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 8, 8)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise UsageError(f"digits-cnn expects images shaped (N, H, W) or (N, H, W, C), got {list(x.shape)}")
    return x


def build_digits_cnn(x: np.ndarray, y: np.ndarray) -> object:
    """A small CNN: raw pixels in (rescaled inside the model), class probabilities out."""
    import keras

    classes = int(np.max(y)) + 1
    inputs = keras.Input(shape=x.shape[1:], dtype="float32", name="image")
    h = keras.layers.Rescaling(1.0 / 16.0, name="rescale")(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3)(h)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_breast_cancer() -> Dataset:
    """scikit-learn's breast-cancer data: 569 rows of 30 raw features, binary label."""
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    data = sklearn_breast_cancer()
    return Dataset(x=data.data.astype(np.float32), y=data.target.astype(np.int64),
                   description="scikit-learn breast cancer (569 rows, 30 features, 2 classes)")


def prepare_features(x: np.ndarray) -> np.ndarray:
    """Tabular rows as (N, F) float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"tabular-mlp expects rows shaped (N, FEATURES), got {list(x.shape)}")
    return x


def build_tabular_mlp(x: np.ndarray, y: np.ndarray) -> object:
    """Standardisation inside the model (adapted on the training rows), Dense(64, relu), Dense(1, sigmoid)."""
    import keras

    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(x)
    inputs = keras.Input(shape=x.shape[1:], dtype="float32", name="features")
    h = normalize(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
    model = keras.Model(inputs, outputs, name="tabular_mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model


BUILTIN_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="digits-cnn",
        description="8x8 digit images, small CNN, 10-class softmax",
        load_data=load_digits,
        build_model=build_digits_cnn,
        prepare=prepare_images,
        epochs=20,
        batch_size=32,
    ),
    Recipe(
        name="tabular-mlp",
        description="breast-cancer features, standardisation in the model, Dense(64) -> Dense(1, sigmoid)",
        load_data=load_breast_cancer,
        build_model=build_tabular_mlp,
        prepare=prepare_features,
        epochs=40,
        batch_size=32,
    ),
)

"""The coverage sweep's model zoo: one small model per Keras layer, activation and application, as data.

Each `Case` names what it covers and how to build a model around it (an `Input`, the layer, nothing else unless
the layer needs a neighbour). Inputs that must come from a domain (token ids, vocabulary entries, pixel values)
come from the case's `data` function; the others are generated from the signature by verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

Data = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One model of the sweep."""

    name: str
    """Row of the matrix: the layer's class name, `activation:NAME` or `application:NAME`."""
    group: str
    build: Callable[[], keras.Model]
    data: Data | None = None
    """Inputs by name, for `rows` rows; default: generated from the signature."""
    slow: bool = False
    """Applications: seconds to minutes each."""


def _model(shape: tuple[int | None, ...], make: Callable[[], Any], dtype: str = "float32") -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        inputs = keras.Input(shape, dtype=dtype, name="x")
        return keras.Model(inputs, make()(inputs))
    return build


def _pair(shape_a: tuple[int, ...], shape_b: tuple[int, ...], make: Callable[[], Any],
          as_list: bool = True) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        a, b = keras.Input(shape_a, name="a"), keras.Input(shape_b, name="b")
        layer = make()
        return keras.Model({"a": a, "b": b}, layer([a, b]) if as_list else layer(a, b))
    return build


def _then(shape: tuple[int, ...], *makes: Callable[[], Any], dtype: str = "float32") -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        inputs = keras.Input(shape, dtype=dtype, name="x")
        h = inputs
        for make in makes:
            h = make()(h)
        return keras.Model(inputs, h)
    return build


def _ints(shape: tuple[int, ...], low: int, high: int, dtype: str = "int64") -> Data:
    return lambda rng, rows: {"x": rng.integers(low, high + 1, size=(rows, *shape)).astype(dtype)}


def _choice(shape: tuple[int, ...], values: list[Any], dtype: str | None = None) -> Data:
    return lambda rng, rows: {"x": np.asarray(rng.choice(np.asarray(values), size=(rows, *shape)), dtype=dtype)}


def _pixels(shape: tuple[int, ...]) -> Data:
    return lambda rng, rows: {"x": rng.uniform(0, 255, size=(rows, *shape)).astype("float32")}


L = keras.layers
IMAGE = (8, 8, 3)
SEQ = (6, 4)
VOLUME = (4, 4, 4, 2)
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
SENTENCES = ["the cat sat", "a dog ran on the mat", "the mat", "cat", "dog sat on a cat", "the the the ran"]


def _layer_cases() -> list[Case]:
    c: list[Case] = []

    def add(name: str, group: str, build: Callable[[], keras.Model], data: Data | None = None) -> None:
        c.append(Case(name, group, build, data))

    # core
    add("Dense", "core", _model((8,), lambda: L.Dense(4)))
    add("EinsumDense", "core", _model((8,), lambda: L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c")))
    add("Embedding", "core", _model((5,), lambda: L.Embedding(20, 4), "int32"))
    add("ReversibleEmbedding", "core", _model((5,), lambda: L.ReversibleEmbedding(20, 4), "int32"))
    add("Identity", "core", _model((8,), L.Identity))
    add("Activation", "core", _model((8,), lambda: L.Activation("tanh")))
    add("Masking", "core", _then(SEQ, lambda: L.Masking(0.0), lambda: L.SimpleRNN(3)),
        lambda rng, rows: {"x": rng.standard_normal((rows, *SEQ)).astype("float32")
                           * (rng.random((rows, SEQ[0], 1)) > 0.3)})
    # regularisation: identity at inference
    add("Dropout", "regularization", _model((8,), lambda: L.Dropout(0.5)))
    add("AlphaDropout", "regularization", _model((8,), lambda: L.AlphaDropout(0.5)))
    add("GaussianDropout", "regularization", _model((8,), lambda: L.GaussianDropout(0.5)))
    add("GaussianNoise", "regularization", _model((8,), lambda: L.GaussianNoise(0.5)))
    add("SpatialDropout1D", "regularization", _model(SEQ, lambda: L.SpatialDropout1D(0.5)))
    add("SpatialDropout2D", "regularization", _model(IMAGE, lambda: L.SpatialDropout2D(0.5)))
    add("SpatialDropout3D", "regularization", _model(VOLUME, lambda: L.SpatialDropout3D(0.5)))
    add("ActivityRegularization", "regularization", _model((8,), lambda: L.ActivityRegularization(0.1, 0.1)))
    # convolution
    add("Conv1D", "convolution", _model(SEQ, lambda: L.Conv1D(3, 3)))
    add("Conv2D", "convolution", _model(IMAGE, lambda: L.Conv2D(4, 3, padding="same")))
    add("Conv3D", "convolution", _model(VOLUME, lambda: L.Conv3D(3, 2)))
    add("Conv1DTranspose", "convolution", _model(SEQ, lambda: L.Conv1DTranspose(3, 3, strides=2)))
    add("Conv2DTranspose", "convolution", _model(IMAGE, lambda: L.Conv2DTranspose(4, 3, strides=2)))
    add("Conv3DTranspose", "convolution", _model(VOLUME, lambda: L.Conv3DTranspose(3, 2, strides=2)))
    add("DepthwiseConv1D", "convolution", _model(SEQ, lambda: L.DepthwiseConv1D(3, depth_multiplier=2)))
    add("DepthwiseConv2D", "convolution", _model(IMAGE, lambda: L.DepthwiseConv2D(3, depth_multiplier=2)))
    add("SeparableConv1D", "convolution", _model(SEQ, lambda: L.SeparableConv1D(3, 3)))
    add("SeparableConv2D", "convolution", _model(IMAGE, lambda: L.SeparableConv2D(4, 3)))
    # pooling
    for dims, shape in ((1, SEQ), (2, IMAGE), (3, VOLUME)):
        add(f"AveragePooling{dims}D", "pooling", _model(shape, lambda d=dims: getattr(L, f"AveragePooling{d}D")(2)))  # type: ignore[misc]
        add(f"MaxPooling{dims}D", "pooling", _model(shape, lambda d=dims: getattr(L, f"MaxPooling{d}D")(2)))  # type: ignore[misc]
        add(f"GlobalAveragePooling{dims}D", "pooling",
            _model(shape, lambda d=dims: getattr(L, f"GlobalAveragePooling{d}D")()))  # type: ignore[misc]
        add(f"GlobalMaxPooling{dims}D", "pooling", _model(shape, lambda d=dims: getattr(L, f"GlobalMaxPooling{d}D")()))  # type: ignore[misc]
        add(f"AdaptiveAveragePooling{dims}D", "pooling",
            _model(shape, lambda d=dims: getattr(L, f"AdaptiveAveragePooling{d}D")(2)))  # type: ignore[misc]
        add(f"AdaptiveMaxPooling{dims}D", "pooling",
            _model(shape, lambda d=dims: getattr(L, f"AdaptiveMaxPooling{d}D")(2)))  # type: ignore[misc]
    # normalization
    add("BatchNormalization", "normalization", _model(IMAGE, lambda: L.BatchNormalization(
        moving_mean_initializer=keras.initializers.RandomUniform(-1, 1),
        moving_variance_initializer=keras.initializers.RandomUniform(0.5, 2))))
    add("LayerNormalization", "normalization", _model(SEQ, L.LayerNormalization))
    add("GroupNormalization", "normalization", _model((8, 8, 4), lambda: L.GroupNormalization(groups=2)))
    add("UnitNormalization", "normalization", _model((8,), L.UnitNormalization))
    add("RMSNormalization", "normalization", _model(SEQ, L.RMSNormalization))
    add("SpectralNormalization", "normalization", _model((8,), lambda: L.SpectralNormalization(L.Dense(4))))
    # attention
    add("Attention", "attention", _pair((4, 8), (5, 8), L.Attention))
    add("AdditiveAttention", "attention", _pair((4, 8), (5, 8), L.AdditiveAttention))
    add("MultiHeadAttention", "attention", _pair((4, 8), (5, 8), lambda: L.MultiHeadAttention(2, 4), as_list=False))
    add("GroupQueryAttention", "attention",
        _pair((4, 8), (5, 8), lambda: L.GroupQueryAttention(4, 4, 2), as_list=False))
    # recurrent
    add("SimpleRNN", "recurrent", _model(SEQ, lambda: L.SimpleRNN(3)))
    add("LSTM", "recurrent", _model(SEQ, lambda: L.LSTM(3)))
    add("GRU", "recurrent", _model(SEQ, lambda: L.GRU(3)))
    add("SimpleRNNCell", "recurrent", _model(SEQ, lambda: L.RNN(L.SimpleRNNCell(3))))
    add("LSTMCell", "recurrent", _model(SEQ, lambda: L.RNN(L.LSTMCell(3))))
    add("GRUCell", "recurrent", _model(SEQ, lambda: L.RNN(L.GRUCell(3), return_sequences=True)))
    add("StackedRNNCells", "recurrent", _model(SEQ, lambda: L.RNN(L.StackedRNNCells([L.GRUCell(3), L.LSTMCell(2)]))))
    add("Bidirectional", "recurrent", _model(SEQ, lambda: L.Bidirectional(L.LSTM(3))))
    add("TimeDistributed", "recurrent", _model(SEQ, lambda: L.TimeDistributed(L.Dense(3))))
    add("ConvLSTM1D", "recurrent", _model((3, 8, 2), lambda: L.ConvLSTM1D(2, 3)))
    add("ConvLSTM2D", "recurrent", _model((3, 6, 6, 2), lambda: L.ConvLSTM2D(2, 3)))
    add("ConvLSTM3D", "recurrent", _model((2, 4, 4, 4, 1), lambda: L.ConvLSTM3D(2, 2)))
    # merging
    for merge in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"):
        add(merge, "merging", _pair((6,), (6,), lambda m=merge: getattr(L, m)()))  # type: ignore[misc]
    add("Dot", "merging", _pair((6,), (6,), lambda: L.Dot(axes=1)))
    # reshaping
    add("Flatten", "reshaping", _model(IMAGE, L.Flatten))
    add("Reshape", "reshaping", _model((12,), lambda: L.Reshape((3, 4))))
    add("Permute", "reshaping", _model(SEQ, lambda: L.Permute((2, 1))))
    add("RepeatVector", "reshaping", _model((4,), lambda: L.RepeatVector(3)))
    add("Cropping1D", "reshaping", _model(SEQ, lambda: L.Cropping1D((1, 2))))
    add("Cropping2D", "reshaping", _model(IMAGE, lambda: L.Cropping2D(((1, 2), (2, 1)))))
    add("Cropping3D", "reshaping", _model(VOLUME, lambda: L.Cropping3D(1)))
    add("UpSampling1D", "reshaping", _model(SEQ, lambda: L.UpSampling1D(2)))
    add("UpSampling2D", "reshaping", _model(IMAGE, lambda: L.UpSampling2D(2)))
    add("UpSampling3D", "reshaping", _model(VOLUME, lambda: L.UpSampling3D(2)))
    add("ZeroPadding1D", "reshaping", _model(SEQ, lambda: L.ZeroPadding1D(2)))
    add("ZeroPadding2D", "reshaping", _model(IMAGE, lambda: L.ZeroPadding2D(1)))
    add("ZeroPadding3D", "reshaping", _model(VOLUME, lambda: L.ZeroPadding3D(1)))
    # activation layers
    add("ELU", "activation layers", _model((8,), L.ELU))
    add("LeakyReLU", "activation layers", _model((8,), lambda: L.LeakyReLU(0.2)))
    add("PReLU", "activation layers", _model((8,), lambda: L.PReLU(
        alpha_initializer=keras.initializers.RandomUniform(0.1, 0.3))))
    add("ReLU", "activation layers", _model((8,), lambda: L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2)))
    add("Softmax", "activation layers", _model((8,), L.Softmax))
    # preprocessing: numbers and categories
    add("Normalization", "preprocessing",
        _model((4,), lambda: L.Normalization(mean=[0, 1, 2, 3], variance=[1, 2, 3, 4])))
    add("Rescaling", "preprocessing", _model(IMAGE, lambda: L.Rescaling(1 / 127.5, offset=-1)), _pixels(IMAGE))
    add("Resizing", "preprocessing", _model(IMAGE, lambda: L.Resizing(5, 6)), _pixels(IMAGE))
    add("CenterCrop", "preprocessing", _model(IMAGE, lambda: L.CenterCrop(4, 6)), _pixels(IMAGE))
    add("Discretization", "preprocessing", _model((4,), lambda: L.Discretization(bin_boundaries=[-1.0, 0.0, 1.0])))
    add("CategoryEncoding", "preprocessing",
        _model((3,), lambda: L.CategoryEncoding(8, output_mode="multi_hot"), "int32"), _ints((3,), 0, 7, "int32"))
    add("Hashing", "preprocessing", _model((3,), lambda: L.Hashing(16), "int64"), _ints((3,), 0, 1000))
    add("HashedCrossing", "preprocessing", _pair_ints(lambda: L.HashedCrossing(16)),
        lambda rng, rows: {"a": rng.integers(0, 50, (rows, 1)), "b": rng.integers(0, 50, (rows, 1))})
    add("IntegerLookup", "preprocessing", _model((3,), lambda: L.IntegerLookup(vocabulary=[10, 20, 30, 40]), "int64"),
        _choice((3,), [10, 20, 30, 40, 99], "int64"))
    add("StringLookup", "preprocessing", _model((3,), lambda: L.StringLookup(vocabulary=WORDS), "string"),
        _choice((3,), [*WORDS, "zebra"]))
    add("TextVectorization", "preprocessing", _model((1,), lambda: L.TextVectorization(
        vocabulary=WORDS, output_sequence_length=5), "string"), _choice((1,), SENTENCES))
    add("MelSpectrogram", "preprocessing", _model((256,), lambda: L.MelSpectrogram(
        fft_length=64, sequence_stride=32, sampling_rate=8000, num_mel_bins=8)))
    add("STFTSpectrogram", "preprocessing", _model((256, 1), lambda: L.STFTSpectrogram(
        frame_length=32, frame_step=16, fft_length=32)))
    add("Pipeline", "preprocessing", _model(IMAGE, lambda: L.Pipeline([L.Rescaling(1 / 255), L.CenterCrop(6, 6)])),
        _pixels(IMAGE))
    # preprocessing: image augmentation (most are the identity at inference; all take pixels in [0, 255])
    augment: dict[str, Callable[[], Any]] = {
        "AutoContrast": L.AutoContrast,
        "Equalization": L.Equalization,
        "ContrastLimitedAdaptiveHistogramEqualization":
            lambda: L.ContrastLimitedAdaptiveHistogramEqualization(tile_grid_size=(2, 2)),
        "Solarization": L.Solarization,
        "RandomFlip": L.RandomFlip,
        "RandomRotation": lambda: L.RandomRotation(0.1),
        "RandomZoom": lambda: L.RandomZoom(0.1),
        "RandomCrop": lambda: L.RandomCrop(6, 6),
        "RandomTranslation": lambda: L.RandomTranslation(0.1, 0.1),
        "RandomContrast": lambda: L.RandomContrast(0.1),
        "RandomBrightness": lambda: L.RandomBrightness(0.1),
        "RandomColorDegeneration": lambda: L.RandomColorDegeneration(0.1),
        "RandomColorJitter": lambda: L.RandomColorJitter(brightness_factor=0.1),
        "RandomGrayscale": L.RandomGrayscale,
        "RandomHue": lambda: L.RandomHue(0.1),
        "RandomInvert": L.RandomInvert,
        "RandomPerspective": L.RandomPerspective,
        "RandomPosterization": lambda: L.RandomPosterization(4),
        "RandomSaturation": lambda: L.RandomSaturation(0.1),
        "RandomSharpness": lambda: L.RandomSharpness(0.1),
        "RandomShear": lambda: L.RandomShear(0.1),
        "RandomElasticTransform": L.RandomElasticTransform,
        "RandomErasing": L.RandomErasing,
        "RandomGaussianBlur": L.RandomGaussianBlur,
        "AugMix": L.AugMix,
        "RandAugment": L.RandAugment,
        "CutMix": L.CutMix,
        "MixUp": L.MixUp,
    }
    for name, make in augment.items():
        add(name, "image augmentation", _model(IMAGE, make), _pixels(IMAGE))
    return c


def _pair_ints(make: Callable[[], Any]) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        a, b = keras.Input((1,), dtype="int64", name="a"), keras.Input((1,), dtype="int64", name="b")
        return keras.Model({"a": a, "b": b}, make()((a, b)))
    return build


ACTIVATIONS: tuple[str, ...] = (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_tanh",
    "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu", "sigmoid", "silu",
    "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus",
    "tanh", "tanh_shrink", "threshold",
)
"""Every function in keras.activations (aliases left out: swish = silu, hard_swish = hard_silu)."""


def _activation_cases() -> list[Case]:
    return [Case(f"activation:{name}", "activations",
                 _then((8,), lambda: L.Dense(8), lambda n=name: L.Activation(n)))  # type: ignore[misc]
            for name in ACTIVATIONS]


APPLICATIONS: dict[str, tuple[int, int, int]] = {
    "MobileNet": (32, 32, 3),
    "MobileNetV2": (32, 32, 3),
    "MobileNetV3Small": (32, 32, 3),
    "EfficientNetB0": (32, 32, 3),
    "EfficientNetV2B0": (32, 32, 3),
    "ResNet50": (32, 32, 3),
}
"""keras.applications built with weights=None (no download) at their smallest input, 10 classes. The others
(DenseNet, NASNet, ConvNeXt, Xception, Inception, VGG, larger EfficientNets) take minutes each on 2 cores, past
the sweep's 20-minute budget."""


def _application_cases() -> list[Case]:
    def build(name: str, shape: tuple[int, int, int]) -> Callable[[], keras.Model]:
        return lambda: getattr(keras.applications, name)(weights=None, input_shape=shape, classes=10)
    return [Case(f"application:{name}", "applications", build(name, shape), _pixels(shape), slow=True)
            for name, shape in APPLICATIONS.items()]


def all_cases() -> list[Case]:
    """The whole zoo: layers, then activations, then applications."""
    return _layer_cases() + _activation_cases() + _application_cases()


NOT_COVERED: dict[str, str] = {
    "Layer": "the base class: no computation of its own",
    "InputLayer": "part of every model (keras.Input)",
    "InputSpec": "not a layer: a shape and dtype description",
    "Wrapper": "abstract base of Bidirectional and TimeDistributed (both covered)",
    "RNN": "covered through the cells it runs (SimpleRNNCell, LSTMCell, GRUCell, StackedRNNCells)",
    "Lambda": "arbitrary Python code: refused without --unsafe; what it converts to depends on the function",
    "TFSMLayer": "wraps an existing SavedModel for inference only; it cannot be saved to a .keras file",
    "JaxLayer": "JAX backend only",
    "FlaxLayer": "JAX backend only",
    "TorchModuleWrapper": "PyTorch backend only",
    "MaxNumBoundingBoxes": "operates on bounding-box dictionaries, not tensors",
}
"""Public classes of keras.layers the sweep does not build, with why (aliases are folded into their target)."""

"""Refusals from the known-failure table: which layers of a model match, for which format and quantisation."""

import pytest

from kdeploy.export.known_failures import KNOWN_FAILURES, KnownFailure, column_of, refusals

keras = pytest.importorskip("keras")

TABLE = (
    KnownFailure("LSTMCell", ("tflite",), "cell reason"),
    KnownFailure("Conv3DTranspose", ("onnx", "tflite-fp16"), "conv reason"),
    KnownFailure("activation:gelu", ("onnx",), "gelu reason"),
)


def _model(*layers, shape=(6, 4)):
    inputs = keras.Input(shape)
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, h)


def test_column_of_names_quantised_tflite():
    assert [column_of("onnx"), column_of("tflite"), column_of("tflite", "fp16")] == ["onnx", "tflite", "tflite-fp16"]


def test_a_layer_in_the_table_is_refused_for_its_columns_only_naming_layer_and_reason():
    model = _model(keras.layers.Conv3DTranspose(2, 2, name="up"), shape=(4, 4, 4, 1))
    assert refusals(model, ("savedmodel", "onnx", "tflite"), table=TABLE) == {
        "onnx": "layer 'up' (Conv3DTranspose) is known not to work in onnx: conv reason"}
    assert set(refusals(model, ("tflite",), "fp16", table=TABLE)) == {"tflite"}
    assert refusals(model, ("tflite",), "dynamic-int8", table=TABLE) == {}


def test_nested_layers_and_activations_are_found_but_not_a_built_in_rnns_own_cell():
    wrapped = _model(keras.layers.Bidirectional(keras.layers.RNN(keras.layers.LSTMCell(3))))
    assert "cell reason" in refusals(wrapped, ("tflite",), table=TABLE)["tflite"]
    assert refusals(_model(keras.layers.LSTM(3)), ("tflite",), table=TABLE) == {}
    dense = _model(keras.layers.Dense(3, activation="gelu", name="d"), shape=(4,))
    assert refusals(dense, ("onnx",), table=TABLE) == {
        "onnx": "layer 'd' (activation:gelu) is known not to work in onnx: gelu reason"}


def test_the_table_names_real_columns_and_gives_reasons():
    columns = {"savedmodel", "onnx", "tflite", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8"}
    for failure in KNOWN_FAILURES:
        assert set(failure.columns) <= columns and len(failure.reason) > 20, failure

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


def test_tflite_converter_reasons_drop_mlir_locations():
    pytest.importorskip("tensorflow")
    from kdeploy.export.convert import _converter_reason

    text = ('Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(callsite(fused["AsString:", "f"] at '
            'fused["P:", "P"])): \'tf.AsString\' op is neither a custom op nor a flex op\n<unknown>:0: note: '
            'loc(fused["P:", "P"]): called from')
    assert _converter_reason(Exception(text)) == "'tf.AsString' op is neither a custom op nor a flex op"


def test_the_table_refuses_a_measured_failure_with_its_reason():
    model = _model(keras.layers.MaxPooling3D(2, name="pool"), shape=(4, 4, 4, 2))
    refused = refusals(model, ("savedmodel", "onnx", "tflite"), "fp16")
    assert list(refused) == ["tflite"] and "layer 'pool' (MaxPooling3D)" in refused["tflite"]
    assert "no 3-D pooling op" in refused["tflite"]


def test_every_conversion_failure_of_the_sweep_is_in_the_table():
    import json
    from pathlib import Path

    coverage = json.loads((Path(__file__).parents[3] / "docs" / "coverage.json").read_text())
    table = {(f.layer, column) for f in KNOWN_FAILURES for column in f.columns}
    missing = [(row["name"], column) for row in coverage["rows"] if not row["name"].startswith("application:")
               for column, cell in row["cells"].items()
               if cell["status"] == "fail" and cell["stage"] == "convert" and "string input" not in cell["reason"]
               and "not a loadable Keras model" not in cell["reason"] and "Activation.call()" not in cell["reason"]
               and (row["name"], column) not in table]
    assert missing == []

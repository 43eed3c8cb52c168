"""Regression tests for the converter fixes and refusals found by the coverage sweep, and a fast sweep subset."""

from __future__ import annotations

import pytest

from kdeploy.contract.manifest import read_manifest

pytestmark = pytest.mark.slow


def _save(model, path):
    model.save(path)
    return path


def _string_model():
    import keras

    keras.utils.set_random_seed(5)
    words = keras.Input((3,), dtype="string", name="words")
    h = keras.layers.StringLookup(vocabulary=["the", "cat", "sat", "on", "a", "mat"])(words)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(7, 4)(h))
    return keras.Model(words, keras.layers.Dense(2, activation="softmax", name="p")(h))


def test_exact_gelu_converts_to_onnx_with_erfc_rewritten(tmp_path, kdeploy):
    # tf2onnx leaves TensorFlow's Erfc in the graph; onnxruntime then refused the model ("No Op registered for Erfc").
    import keras

    inputs = keras.Input((8,), name="x")
    path = _save(keras.Model(inputs, keras.layers.Dense(4, activation="gelu")(inputs)), tmp_path / "gelu.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "gelu", "--formats", "onnx")
    assert result.code == 0, result.out
    assert "onnx" in read_manifest(tmp_path / "repo" / "gelu" / "1").artifacts


def test_a_string_input_model_exports_savedmodel_and_tflite_and_refuses_onnx(tmp_path, kdeploy):
    path = _save(_string_model(), tmp_path / "words.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "words", "--allow-partial")
    assert result.code == 0, result.out
    assert "string input 'words'" in result.out
    manifest = read_manifest(tmp_path / "repo" / "words" / "1")
    spec = manifest.signature.inputs[0]
    assert (spec.dtype, spec.shape, spec.examples[:2]) == ("string", (None, 3), ("the", "cat"))
    assert set(manifest.artifacts) == {"savedmodel", "tflite"}
    assert "onnxruntime server does not decode strings" in manifest.failed_formats["onnx"]
    # Parity compared generated sentences from the vocabulary in both formats.
    verify = kdeploy("verify", tmp_path / "repo" / "words")
    assert verify.code == 0, verify.out


def test_the_onnx_server_reports_a_string_model_it_cannot_serve_and_serves_the_others(tmp_path, exported_repo):
    import shutil

    from kdeploy.export.exporter import ExportConfig, export_model
    from tests.conftest import start_server

    repo = tmp_path / "repo"
    shutil.copytree(exported_repo / "tabular", repo / "tabular")
    path = _save(_string_model(), tmp_path / "words.keras")
    export_model(ExportConfig(model_path=path, repository=repo, name="words", allow_partial=True, verify=False),
                 progress=lambda _: None)
    server = start_server("--repository", repo)
    try:
        assert "tabular:1(AVAILABLE)" in server.banner and server.process.poll() is None
        from tests.integration.test_serve_lifecycle import version_states

        assert version_states(server.grpc, "words") == {1: 50}  # END, with the export's reason in the log
    finally:
        server.stop()
    assert "string input" in server.log()


def test_a_layer_in_the_known_failure_table_is_refused_before_converting(tmp_path, kdeploy, monkeypatch):
    import keras

    from kdeploy.export import known_failures

    table = (known_failures.KnownFailure("Conv1DTranspose", ("onnx",), "measured reason from the sweep"),)
    monkeypatch.setattr(known_failures, "KNOWN_FAILURES", table)
    inputs = keras.Input((6, 4), name="x")
    model = keras.Model(inputs, keras.layers.Conv1DTranspose(3, 3, name="up")(inputs))
    path = _save(model, tmp_path / "up.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "up", "--formats", "savedmodel,onnx")
    assert result.code == 1
    assert "onnx refused before converting: layer 'up' (Conv1DTranspose)" in result.out
    manifest = read_manifest(tmp_path / "repo" / "up" / "1")
    assert set(manifest.artifacts) == {"savedmodel"}
    assert manifest.failed_formats["onnx"].endswith("measured reason from the sweep")


@pytest.mark.parametrize("name", ["Dense", "Conv2D", "LSTM", "MultiHeadAttention", "activation:gelu", "StringLookup"])
def test_sweep_subset(tmp_path, name):
    from kdeploy.export.coverage.sweep import CELLS, run_case

    result = run_case(name, tmp_path, samples=8)
    assert set(result.cells) == set(CELLS)
    failing = {cell: c["reason"] for cell, c in result.cells.items() if c["status"] != "pass"}
    expected = {"StringLookup": {"onnx"}}.get(name, set())
    assert set(failing) == expected, failing
    assert all(failing.values())

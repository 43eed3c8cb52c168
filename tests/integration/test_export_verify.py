import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdeploy.contract.manifest import read_manifest
from tests.models import text_classifier, two_input_model

pytestmark = pytest.mark.slow


def _save(model, path: Path) -> Path:
    model.save(path)
    return path


@pytest.mark.parametrize("name", ["digits", "tabular"])
def test_recipes_export_with_layout_manifest_and_passing_parity(exported_repo, name):
    version = exported_repo / name / "1"
    for path in ("saved_model.pb", "variables", "model.onnx", "model.tflite", "model.keras", "manifest.json",
                 "parity.json", "parity.md", "parity.png", "validation.npz"):
        assert (version / path).exists(), path
    manifest = read_manifest(version)
    assert set(manifest.artifacts) == {"savedmodel", "tflite", "onnx"} and manifest.failed_formats == {}
    assert all(a.bytes > 0 and len(a.sha256) == 64 for a in manifest.artifacts.values())
    spec = manifest.signature.inputs[0]
    assert spec.shape[0] is None and spec.name == {"digits": "image", "tabular": "features"}[name]
    parity = json.loads((version / "parity.json").read_text())
    assert parity["passed"] and parity["data_source"] == "the version's validation.npz"
    assert {f["format"] for f in parity["formats"]} == {"savedmodel", "tflite", "onnx"}
    for fmt in parity["formats"]:
        for out in fmt["outputs"]:
            assert out["max_abs_error"] <= 1e-5 and out["label_agreement"] == 1.0


def test_savedmodel_signature_uses_the_models_own_names(exported_repo):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported_repo / "digits" / "1"))
    fn = loaded.signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["image"]
    assert list(fn.structured_outputs) == ["probabilities"]


def test_two_named_inputs_and_outputs(tmp_path, kdeploy):
    path = _save(two_input_model(), tmp_path / "two.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "two")
    assert result.code == 0, result.out + result.err
    manifest = read_manifest(tmp_path / "repo" / "two" / "1")
    assert sorted(manifest.signature.input_names) == ["meta", "pixels"]
    assert sorted(manifest.signature.output_names) == ["label", "score"]
    parity = json.loads((tmp_path / "repo" / "two" / "1" / "parity.json").read_text())
    assert "generated inputs" in parity["data_source"]


def test_sequential_model(tmp_path, kdeploy):
    import keras

    model = keras.Sequential([keras.Input((5,), name="features"), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(3, activation="softmax", name="probabilities")])
    path = _save(model, tmp_path / "seq.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "seq", "--formats", "savedmodel,onnx")
    assert result.code == 0, result.out + result.err
    signature = read_manifest(tmp_path / "repo" / "seq" / "1").signature
    assert signature.input_names == ["features"] and signature.output_names == ["probabilities"]


def test_embedding_lstm_with_int32_tokens(tmp_path, kdeploy):
    path = _save(text_classifier(), tmp_path / "text.keras")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "text")
    assert result.code == 0, result.out + result.err
    manifest = read_manifest(tmp_path / "repo" / "text" / "1")
    tokens = manifest.signature.inputs[0]
    assert (tokens.dtype, tokens.shape, tokens.value_range) == ("int32", (None, 12), (0.0, 199.0))
    assert set(manifest.artifacts) == {"savedmodel", "tflite", "onnx"}


def test_a_format_that_cannot_convert_is_reported_and_the_others_written(tmp_path, kdeploy):
    # TFLite cannot lower an LSTM whose sequence length is dynamic.
    path = _save(text_classifier(length=None), tmp_path / "dyn.keras")
    result = kdeploy(
        "export", path, "--repository", tmp_path / "repo", "--name", "dyn", "--formats", "savedmodel,tflite"
    )
    assert result.code == 1
    assert "tflite could not be converted" in result.out and "dynamic dimension" in result.out
    manifest = read_manifest(tmp_path / "repo" / "dyn" / "1")
    assert set(manifest.artifacts) == {"savedmodel"} and "tflite" in manifest.failed_formats
    partial = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "dyn", "--formats",
                      "savedmodel,tflite", "--allow-partial", "--no-verify")
    assert partial.code == 0 and (tmp_path / "repo" / "dyn" / "2" / "saved_model.pb").exists()


def test_altered_onnx_weights_fail_verify_naming_onnx(exported_repo, tmp_path, kdeploy):
    import onnx
    from onnx import numpy_helper

    shutil.copytree(exported_repo / "digits", tmp_path / "digits")
    onnx_path = tmp_path / "digits" / "1" / "model.onnx"
    model = onnx.load(onnx_path)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
    onnx.save(model, onnx_path)

    result = kdeploy("verify", tmp_path / "digits", "--report", tmp_path / "report")
    assert result.code == 1
    assert "FAIL onnx output 'probabilities'" in result.out and "over tolerance" in result.out
    parity = json.loads((tmp_path / "report" / "parity.json").read_text())
    status = {f["format"]: f["passed"] for f in parity["formats"]}
    assert status == {"savedmodel": True, "tflite": True, "onnx": False}
    assert (tmp_path / "report" / "parity.png").stat().st_size > 0


@pytest.mark.parametrize("quantization", ["fp16", "int8"])
def test_quantized_tflite_passes_its_own_tolerance(digits_trained, tmp_path, kdeploy, quantization):
    result = kdeploy("export", digits_trained.model_path, "--repository", tmp_path, "--name", "q",
                     "--formats", "tflite", "--tflite-quantization", quantization)
    assert result.code == 0, result.out + result.err
    parity = json.loads((tmp_path / "q" / "1" / "parity.json").read_text())
    tflite = parity["formats"][0]
    assert tflite["precision"] == {"fp16": "fp16", "int8": "int8"}[quantization]
    assert tflite["outputs"][0]["label_agreement"] >= 0.98
    size = (tmp_path / "q" / "1" / "model.tflite").stat().st_size
    assert size < 0.6 * (digits_trained.model_path.stat().st_size)


def test_lambda_layers_need_unsafe(tmp_path, kdeploy):
    import keras

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs))
    path = _save(model, tmp_path / "lambda.keras")
    refused = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "l")
    assert refused.code == 2 and "Lambda" in refused.err and "--unsafe" in refused.err
    assert not (tmp_path / "repo" / "l" / "1").exists()
    allowed = kdeploy(
        "export", path, "--repository", tmp_path / "repo", "--name", "l", "--unsafe", "--formats", "savedmodel"
    )
    assert allowed.code == 0, allowed.out + allowed.err


def test_an_export_stopped_half_way_leaves_no_version(digits_trained, tmp_path):
    repo = tmp_path / "repo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdeploy", "export", str(digits_trained.model_path), "--repository", str(repo),
         "--name", "d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(repo.glob("d/.staging-*/saved_model.pb")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert list(repo.glob("d/.staging-*/saved_model.pb")), "export never reached the SavedModel step"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert list((repo / "d").iterdir()) == []

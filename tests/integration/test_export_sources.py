"""`kdeploy export SOURCE` from a legacy .h5 file and from a SavedModel folder (real TensorFlow, tiny models)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdeploy.contract.manifest import read_manifest
from tests.models import keras2_h5, multi_signature_savedmodel


def _one_clear_line(result, *needles):
    assert result.code == 2, (result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def savedmodel(tmp_path_factory):
    """The four-signature SavedModel, with validation data for its `scaled` signature beside saved_model.pb."""
    folder = multi_signature_savedmodel(tmp_path_factory.mktemp("sources") / "multi")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(folder / "validation.npz", values=x, scale=rng.uniform(0.5, 2.0, size=(64, 1)).astype(np.float32),
             y=rng.integers(0, 3, size=64))
    return folder


def _save_h5(model, path: Path) -> Path:
    """`model.save(path.h5)` without Keras' "HDF5 is legacy" warning (absl logs it to a handler an earlier
    in-process `kdeploy` call may have bound to a stream pytest has closed since)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        model.save(path)
    finally:
        absl.setLevel(level)
    return path


def _parity(version: Path) -> dict:
    return json.loads((version / "parity.json").read_text())


@pytest.mark.slow
def test_a_savedmodel_signature_to_every_format_through_the_command_line(savedmodel, tmp_path):
    repo = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "kdeploy", "export", str(savedmodel), "--signature", "scaled",
         "--repository", str(repo), "--name", "multi"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = repo / "multi" / "1"
    manifest = read_manifest(version)
    signature = manifest.signature
    assert signature.name == "scaled" and signature.method == "predict"
    assert [(t.name, t.dtype, t.shape) for t in signature.inputs] == [
        ("scale", "float32", (None, 1)), ("values", "float32", (None, 4))]
    assert [(t.name, t.dtype, t.shape) for t in signature.outputs] == [
        ("probabilities", "float32", (None, 3)), ("raw", "float32", (None, 3))]
    assert manifest.source is not None and manifest.source.format == "savedmodel"
    assert manifest.source.sha256 == manifest.artifacts["savedmodel"].sha256
    assert manifest.export_options["source"] == {
        "kind": "savedmodel", "path": str(savedmodel.resolve()), "sha256": manifest.source.sha256,
        "signature": "scaled"}
    assert set(manifest.artifacts) == {"savedmodel", "tflite", "onnx"} and not manifest.failed_formats

    parity = _parity(version)
    assert parity["passed"] and parity["reference"] == "savedmodel"
    assert parity["data_source"] == "the version's validation.npz"
    by_format = {f["format"]: f for f in parity["formats"]}
    assert by_format["savedmodel"]["outputs"] == [] and "reference itself" in by_format["savedmodel"]["note"]
    for fmt in ("tflite", "onnx"):
        assert [o["output"] for o in by_format[fmt]["outputs"]] == ["probabilities", "raw"]
        assert all(o["passed"] and o["max_abs_error"] < 1e-5 for o in by_format[fmt]["outputs"])
    assert "pass: the reference itself" in proc.stdout

    # TF Serving reads the copy as it is (every signature); TFLite and ONNX keep the signature's names.
    import onnxruntime as ort
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    assert set(tf.saved_model.load(str(version)).signatures) == {
        "serving_default", "scaled", "parse_examples", "fixed_batch"}
    runners = Interpreter(model_path=str(version / "model.tflite")).get_signature_list()
    assert runners == {"scaled": {"inputs": ["scale", "values"], "outputs": ["probabilities", "raw"]}}
    session = ort.InferenceSession(str(version / "model.onnx"))
    assert sorted(i.name for i in session.get_inputs()) == ["scale", "values"]
    assert sorted(o.name for o in session.get_outputs()) == ["probabilities", "raw"]


@pytest.mark.slow
def test_kdeploy_verify_compares_with_the_savedmodel_and_catches_a_changed_source(savedmodel, tmp_path, kdeploy):
    repo = tmp_path / "repo"
    exported = kdeploy("export", savedmodel, "--repository", repo, "--name", "m", "--formats", "tflite")
    assert exported.code == 0, exported.out + exported.err
    version = repo / "m" / "1"
    manifest = read_manifest(version)
    # The default signature; the SavedModel is kept as the reference even when it is not an asked-for format.
    assert manifest.signature.name == "serving_default" and set(manifest.artifacts) == {"tflite"}
    assert manifest.source is not None and manifest.source.format == "savedmodel"
    assert "validation.npz not used: it does not fit signature 'serving_default'" in exported.out
    assert manifest.validation_data is None

    verified = kdeploy("verify", repo / "m", "--report", tmp_path / "report")
    assert verified.code == 0, verified.out + verified.err
    assert "verify: reference savedmodel" in verified.out
    assert [f["format"] for f in _parity(tmp_path / "report")["formats"]] == ["tflite"]

    (version / "variables" / "variables.index").write_bytes(b"changed")
    changed = kdeploy("verify", repo / "m")
    _one_clear_line(changed, "the reference model (savedmodel) saved_model.pb does not match the sha256")


@pytest.mark.slow
def test_int8_tflite_from_a_savedmodel_calibrates_on_its_validation_data(savedmodel, tmp_path, kdeploy):
    result = kdeploy("export", savedmodel, "--signature", "scaled", "--repository", tmp_path, "--name", "q",
                     "--formats", "tflite", "--tflite-quantization", "int8")
    assert result.code == 0, result.out + result.err
    manifest = read_manifest(tmp_path / "q" / "1")
    assert manifest.export_options["representative_data"] == str(savedmodel / "validation.npz")
    tflite = _parity(tmp_path / "q" / "1")["formats"][0]
    assert tflite["precision"] == "int8" and tflite["passed"]


@pytest.mark.slow
def test_a_tf_example_signature_keeps_the_savedmodel_and_reports_the_other_formats(savedmodel, tmp_path, kdeploy):
    args = ("export", savedmodel, "--signature", "parse_examples", "--repository", tmp_path, "--name", "ex")
    result = kdeploy(*args)
    assert result.code == 1, result.out + result.err
    assert "onnx refused before converting: string input 'examples'" in result.out
    assert "tflite could not be converted" in result.out and "ParseExampleV2" in result.out
    manifest = read_manifest(tmp_path / "ex" / "1")
    assert manifest.signature.inputs[0].dtype == "string" and manifest.signature.inputs[0].shape == (None,)
    assert set(manifest.artifacts) == {"savedmodel"} and set(manifest.failed_formats) == {"tflite", "onnx"}
    assert manifest.failed_formats["tflite"].endswith("TF Select ops: ParseExampleV2")
    assert "tf.Example" in manifest.failed_formats["onnx"]
    partial = kdeploy(*args, "--allow-partial")
    assert partial.code == 0, partial.out + partial.err
    assert (tmp_path / "ex" / "2" / "saved_model.pb").exists()


@pytest.mark.slow
def test_a_tf1_savedmodel_exports_its_predict_signature_and_keeps_a_classify_one(tmp_path, kdeploy):
    from tests.tf1_savedmodel import write_tf1_savedmodel

    folder = write_tf1_savedmodel(tmp_path / "tf1")
    result = kdeploy("export", folder, "--repository", tmp_path / "repo", "--name", "tf1", "--formats", "onnx,tflite")
    assert result.code == 0, result.out + result.err
    assert _parity(tmp_path / "repo" / "tf1" / "1")["passed"]
    assert "Issue encountered" not in result.out + result.err  # TensorFlow warns about TF1 variable collections
    classify = kdeploy("export", folder, "--signature", "classify", "--repository", tmp_path / "repo", "--name", "tf1",
                       "--formats", "savedmodel")
    assert classify.code == 0, classify.out + classify.err
    signature = read_manifest(tmp_path / "repo" / "tf1" / "2").signature
    assert signature.method == "classify" and signature.input_names == ["inputs"]
    assert [(t.name, t.dtype) for t in signature.outputs] == [("classes", "string"), ("scores", "float32")]


@pytest.mark.slow
@pytest.mark.parametrize(("signature", "needles"), [
    ("nope", ("unknown signature 'nope'", "['fixed_batch', 'parse_examples', 'scaled', 'serving_default']")),
    ("fixed_batch", ("input 'x' has shape [2, 4]", "leading dynamic dimension")),
])
def test_savedmodel_signatures_that_are_refused(savedmodel, tmp_path, kdeploy, signature, needles):
    result = kdeploy("export", savedmodel, "--signature", signature, "--repository", tmp_path, "--name", "r")
    _one_clear_line(result, *needles)
    assert not (tmp_path / "r" / "1").exists()


def test_folders_that_are_not_a_savedmodel(tmp_path, kdeploy):
    (tmp_path / "model" / "3").mkdir(parents=True)
    (tmp_path / "model" / "3" / "saved_model.pb").write_bytes(b"")
    _one_clear_line(kdeploy("export", tmp_path / "model", "--repository", tmp_path / "r", "--name", "m"),
                    "model folder with SavedModel versions [3]", str(tmp_path / "model" / "3"))
    _one_clear_line(kdeploy("export", tmp_path / "model" / "3" / "..", "--repository", tmp_path / "r", "--name", "m"),
                    "model folder with SavedModel versions [3]")
    (tmp_path / "empty").mkdir()
    _one_clear_line(kdeploy("export", tmp_path / "empty", "--repository", tmp_path / "r", "--name", "m"),
                    "without saved_model.pb", "a .keras or .h5 file, or a SavedModel folder")


def test_signature_is_for_savedmodels_only(tmp_path, kdeploy):
    (tmp_path / "m.keras").write_bytes(b"not read: refused before loading")
    _one_clear_line(kdeploy("export", tmp_path / "m.keras", "--signature", "serving_default", "--repository",
                            tmp_path / "r", "--name", "m"),
                    "--signature applies to a SavedModel folder only", "m.keras is a .keras file")


@pytest.mark.slow
def test_an_h5_written_by_keras_exports_with_parity_and_records_its_source(tmp_path, kdeploy):
    import keras

    keras.utils.set_random_seed(8)
    inputs = keras.Input((5,), name="features")
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(
        keras.layers.Dense(8, activation="relu")(inputs))
    h5 = tmp_path / "train" / "model.h5"
    h5.parent.mkdir()
    _save_h5(keras.Model(inputs, outputs), h5)
    np.savez(h5.with_name("validation.npz"), x=np.random.default_rng(9).normal(size=(40, 5)).astype(np.float32),
             y=np.arange(40) % 3)

    result = kdeploy("export", h5, "--repository", tmp_path / "repo", "--name", "h5")
    assert result.code == 0, result.out + result.err
    version = tmp_path / "repo" / "h5" / "1"
    manifest = read_manifest(version)
    assert manifest.source is not None and manifest.source.format == "keras" and (version / "model.keras").is_file()
    source = manifest.export_options["source"]
    assert source["kind"] == "h5" and source["path"] == str(h5.resolve()) and len(source["sha256"]) == 64
    assert manifest.signature.input_names == ["features"] and manifest.signature.output_names == ["probabilities"]
    parity = _parity(version)
    assert parity["passed"] and parity["reference"] == "keras"
    assert parity["data_source"] == "the version's validation.npz"
    assert {f["format"] for f in parity["formats"]} == {"savedmodel", "tflite", "onnx"}


@pytest.mark.slow
def test_a_keras2_h5_file_exports_with_its_own_weights(tmp_path, kdeploy):
    path, predict = keras2_h5(tmp_path / "legacy.h5")
    result = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "k2", "--formats", "savedmodel,onnx")
    assert result.code == 0, result.out + result.err
    version = tmp_path / "repo" / "k2" / "1"
    assert _parity(version)["passed"]
    assert read_manifest(version).export_options["source"]["kind"] == "h5"

    import onnxruntime as ort

    x = np.random.default_rng(10).normal(size=(6, 4)).astype(np.float32)
    (got,) = ort.InferenceSession(str(version / "model.onnx")).run(["probabilities"], {"features": x})
    np.testing.assert_allclose(got, predict(x), atol=1e-5)


@pytest.mark.slow
def test_h5_lambda_layers_need_unsafe_and_broken_h5_files_are_refused(tmp_path, kdeploy):
    import keras

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs))
    path = _save_h5(model, tmp_path / "lambda.h5")
    refused = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "l")
    _one_clear_line(refused, "lambda.h5 contains a Lambda layer", "--unsafe")
    assert not (tmp_path / "repo" / "l").exists()
    allowed = kdeploy("export", path, "--repository", tmp_path / "repo", "--name", "l", "--unsafe",
                      "--formats", "savedmodel")
    assert allowed.code == 0, allowed.out + allowed.err
    assert read_manifest(tmp_path / "repo" / "l" / "1").export_options["unsafe"] is True

    @keras.saving.register_keras_serializable(package="kdeploy_test")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    _save_h5(keras.Model(inputs, Twice(name="twice")(inputs)), tmp_path / "custom.h5")
    del keras.saving.get_custom_objects()["kdeploy_test>Twice"]
    _one_clear_line(kdeploy("export", tmp_path / "custom.h5", "--repository", tmp_path / "repo", "--name", "c"),
                    "custom.h5 uses a custom object Keras does not know", "kdeploy_test>Twice")

    (tmp_path / "junk.h5").write_text("not HDF5")
    _one_clear_line(kdeploy("export", tmp_path / "junk.h5", "--repository", tmp_path / "repo", "--name", "j"),
                    "junk.h5 is not a loadable legacy Keras (.h5) model")
    import h5py

    with h5py.File(tmp_path / "weights.h5", "w") as file:
        file["w"] = np.zeros(3)
    _one_clear_line(kdeploy("export", tmp_path / "weights.h5", "--repository", tmp_path / "repo", "--name", "w"),
                    "weights.h5 is not a loadable legacy Keras (.h5) model")

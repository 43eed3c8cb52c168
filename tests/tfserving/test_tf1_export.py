"""`kdeploy export` of TF Serving's TF1 half_plus_two (reference variables, `VariableV2`): every format converts
(TFLite through frozen variables, the SignatureDef kept in the model's metadata as TF Serving reads it), parity
passes, no TensorFlow warning reaches the output, and the exported TFLite serves with the signature's keys."""

from __future__ import annotations

import json
import urllib.request

import pytest

from kdeploy.contract.manifest import read_manifest
from kdeploy.runtimes.tflite_signature_defs import tflite_signature_defs
from tests.conftest import start_server
from tests.tfserving.harness import SAVED_MODEL_BUNDLE, model_path

pytestmark = pytest.mark.slow


def test_tf1_half_plus_two_exports_to_every_format_quietly(tmp_path, kdeploy):
    source = model_path(SAVED_MODEL_BUNDLE) / "00000123"
    result = kdeploy("export", source, "--repository", tmp_path, "--name", "half_plus_two", "--version", "123")
    assert result.code == 0, result.out + result.err
    output = result.out + result.err
    for noise in ("WARNING", "reference variable", "deprecated", "Instructions for updating"):
        assert noise not in output, output
    version = tmp_path / "half_plus_two" / "123"
    manifest = read_manifest(version)
    assert set(manifest.artifacts) == {"savedmodel", "tflite", "onnx"} and not manifest.failed_formats
    parity = json.loads((version / "parity.json").read_text())
    assert parity["passed"] and {f["format"] for f in parity["formats"]} == {"savedmodel", "tflite", "onnx"}
    stored = tflite_signature_defs(version / "model.tflite")["serving_default"]
    assert (stored.inputs, stored.outputs) == ({"x": "x"}, {"y": "y"})
    assert stored.method_name == "tensorflow/serving/predict"

    server = start_server("--repository", tmp_path, "--backend", "tflite")
    try:
        request = urllib.request.Request(f"http://{server.rest}/v1/models/half_plus_two:predict",
                                         data=b'{"instances": [[1.0], [2.0], [5.0]]}', method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read()) == {"predictions": [[2.5], [3.0], [4.5]]}
    finally:
        assert server.stop() == 0


def test_int8_of_a_tf1_graph_is_a_named_refusal(tmp_path, kdeploy):
    source = model_path(SAVED_MODEL_BUNDLE) / "00000123"
    result = kdeploy("export", source, "--repository", tmp_path, "--name", "m", "--formats", "tflite",
                     "--tflite-quantization", "int8", "--allow-partial")
    assert result.code == 1  # the one format asked for could not be written
    assert "int8 calibration of a TF1 graph (reference variables) is not supported" in result.out, result.out

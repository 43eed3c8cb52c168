"""Serving what kdeploy did not export (no manifest.json): a TF Serving base path written by
`tf.saved_model.save`, Triton's ONNX layout with and without config.pbtxt, a bare `.tflite` file; answered by the
official clients, and broken folders named with their reasons while the good ones serve."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.bare_models import (
    half_plus_two,
    linear,
    write_half_plus_two,
    write_linear_onnx,
    write_tflite_from_savedmodel,
)
from tests.clients import rest, tfs_predict
from tests.conftest import start_server

pytestmark = pytest.mark.slow

X = np.array([[1.0], [2.0], [-4.0]], dtype=np.float32)
ROWS = np.array([[1, 2, 3], [0, -1, 0.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def tf_serving_base(tmp_path_factory):
    repo = tmp_path_factory.mktemp("tfs")
    write_half_plus_two(repo / "hp2" / "123")
    return repo


def test_a_tf_serving_base_path_is_served_without_a_manifest(tf_serving_base):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    proc = start_server("--repository", tf_serving_base, "--backend", "savedmodel")
    try:
        assert "models=hp2:123" in proc.banner, proc.banner
        np.testing.assert_allclose(tfs_predict(proc.grpc, "hp2", {"x": X})["y"], half_plus_two(X))
        # TF Serving's own test: x [1] (typed float_val) to a signature of [-1, 1]; the answer is read from float_val.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp2"
        request.inputs["x"].dtype = tf.float32.as_datatype_enum
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].float_val.append(2.0)
        with grpc.insecure_channel(proc.grpc) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert list(response.outputs["y"].float_val) == [3.0]
        # The graph is fed [3] as it came (as TF Serving feeds it), so the answer is [3], not [3, 1].
        status, body = rest(proc, "/v1/models/hp2:predict", {"instances": [2.0, 3.0, 4.0]})
        assert status == 200 and body["predictions"] == [3.0, 3.5, 4.0], body
        # Values that fill no whole row of [-1, 1]... cannot happen; a wrong dtype is still refused clearly.
        status, body = rest(proc, "/v1/models/hp2:predict", {"instances": [["a"]]})
        assert status == 400 and "input 'x'" in body["error"], body
        status, body = rest(proc, "/v1/models/hp2/versions/123/metadata")
        signature_defs = body["metadata"]["signature_def"]["signature_def"]
        # Every SignatureDef as stored, TF2's init op included, as TF Serving lists them.
        assert status == 200, body
        assert set(signature_defs) == {"serving_default", "times_three", "__saved_model_init_op"}
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(proc.grpc)
        tensor = triton.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        np.testing.assert_allclose(client.infer("hp2", [tensor]).as_numpy("y"), half_plus_two(X))
        np.testing.assert_allclose(tfs_predict(proc.grpc, "hp2", {"x": X}, signature_name="times_three")["y"],
                                   3 * X)
    finally:
        assert proc.stop() == 0


def test_triton_onnx_layout_with_and_without_config(tmp_path):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    write_linear_onnx(repo / "plain" / "1" / "model.onnx")
    write_linear_onnx(repo / "limited" / "1" / "model.onnx", "INPUT0", "OUTPUT0")
    (repo / "limited" / "config.pbtxt").write_text(
        'name: "limited"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')
    write_linear_onnx(repo / "misnamed" / "1" / "model.onnx")
    (repo / "misnamed" / "config.pbtxt").write_text(
        'name: "misnamed"\nmax_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    (repo / "tflite_only" / "1").mkdir(parents=True)
    (repo / "tflite_only" / "1" / "model.tflite").write_bytes(b"x")

    proc = start_server("--repository", repo, "--backend", "onnx")
    try:
        assert "limited:1(AVAILABLE)" in proc.banner and "plain:1(AVAILABLE)" in proc.banner, proc.banner
        assert "unservable=garbage,misnamed,tflite_only" in proc.banner, proc.banner
        client = triton.InferenceServerClient(proc.grpc)
        for model, (name_in, name_out) in {"plain": ("features", "scores"), "limited": ("INPUT0", "OUTPUT0")}.items():
            metadata = client.get_model_metadata(model)
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [(name_in, "FP32", [-1, 3])]
            tensor = triton.InferInput(name_in, list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS)
            np.testing.assert_allclose(client.infer(model, [tensor]).as_numpy(name_out), linear(ROWS), rtol=1e-6)
        three = np.vstack([ROWS, ROWS[:1]])
        tensor = triton.InferInput("INPUT0", list(three.shape), "FP32")
        tensor.set_data_from_numpy(three)
        with pytest.raises(InferenceServerException, match="at most 2 rows") as refused:
            client.infer("limited", [tensor])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        config = client.get_model_config("limited").config
        assert config.max_batch_size == 2 and list(config.input[0].dims) == [3]
        np.testing.assert_allclose(tfs_predict(proc.grpc, "plain", {"features": ROWS})["scores"], linear(ROWS),
                                   rtol=1e-6)
        status, body = rest(proc, "/v1/models/limited:predict", {"instances": ROWS.tolist()})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], linear(ROWS), rtol=1e-6)
        log = proc.log()
        assert "misnamed" in log and "input 'INPUT0' is not one of the model's inputs ['features']" in log, log
        assert "garbage" in log and "tflite_only" in log
        status, body = rest(proc, "/v1/models/misnamed")
        assert status == 200 and body["model_version_status"][0]["state"] == "END", body
        assert "INPUT0" in body["model_version_status"][0]["status"]["error_message"], body
    finally:
        assert proc.stop() == 0


def test_a_bare_tflite_file_is_served(tmp_path, tf_serving_base):
    repo = tmp_path / "repo"
    write_tflite_from_savedmodel(tf_serving_base / "hp2" / "123", repo / "hp2" / "1" / "half_plus_two.tflite")
    proc = start_server("--repository", repo, "--backend", "tflite")
    try:
        assert "models=hp2:1" in proc.banner, proc.banner
        np.testing.assert_allclose(tfs_predict(proc.grpc, "hp2", {"x": X})["y"], half_plus_two(X), rtol=1e-6)
    finally:
        assert proc.stop() == 0


def test_configs_and_model_config_file_on_a_repository_kdeploy_did_not_write(tmp_path, tf_serving_base, kdeploy):
    import shutil

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    shutil.copytree(tf_serving_base / "hp2", repo / "hp2")
    write_linear_onnx(repo / "plain" / "4" / "model.onnx")
    write_linear_onnx(repo / "own" / "1" / "model.onnx")
    own = 'name: "own"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
    (repo / "own" / "config.pbtxt").write_text(own)
    out = tmp_path / "configs"
    result = kdeploy("configs", "--repository", repo, "--out", out, "--base-path", str(repo))
    assert result.code == 0, result.err
    models = text_format.Parse((out / "tfserving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in models.model_config_list.config] == ["hp2"]  # the ONNX models have no SavedModel
    plain = text_format.Parse((out / "triton" / "plain" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(i.name, list(i.dims)) for i in plain.input] == [("features", [3])] and plain.max_batch_size == 32
    assert (out / "triton" / "own" / "config.pbtxt").read_text() == own  # the model's own config, kept
    assert not (out / "triton" / "hp2").exists()

    proc = start_server("--model-config-file", out / "tfserving" / "models.config", "--backend", "savedmodel")
    try:
        assert "models=hp2:123" in proc.banner, proc.banner
        np.testing.assert_allclose(tfs_predict(proc.grpc, "hp2", {"x": X})["y"], half_plus_two(X))
    finally:
        assert proc.stop() == 0


def test_verify_runs_and_cross_checks_the_artifacts_of_a_version_without_manifest(tmp_path, tf_serving_base,
                                                                                    kdeploy):
    import shutil

    from kdeploy.export.verify import VerifyConfig
    from kdeploy.export.verify_bare import verify_bare_version

    version = tmp_path / "hp2" / "7"
    shutil.copytree(tf_serving_base / "hp2" / "123", version)
    write_tflite_from_savedmodel(version, version / "model.tflite")
    lines: list[str] = []
    report = verify_bare_version(version, VerifyConfig(samples=40, max_batch=16, report_dir=tmp_path / "report"),
                                 progress=lines.append)
    assert report.passed, report.failures
    assert report.reference == "savedmodel" and [f.format for f in report.formats] == ["savedmodel", "tflite"]
    assert report.formats[1].outputs[0].max_abs < 1e-5 and report.batch_sizes == [1, 8, 16, 15]
    assert (tmp_path / "report" / "parity.json").is_file() and not (version / "parity.json").exists()

    (version / "model.onnx").write_bytes(b"garbage")  # an artifact that does not load fails, the others still run
    report = verify_bare_version(version, VerifyConfig(samples=8, report_dir=tmp_path / "report"))
    assert not report.passed and [f.format for f in report.formats] == ["savedmodel", "tflite", "onnx"]
    assert report.failures[0].startswith("onnx: could not run:"), report.failures

    (version / "model.onnx").unlink()
    result = kdeploy("verify", version, "--report", tmp_path / "cli", "--samples", "8")
    assert result.code == 0 and (tmp_path / "cli" / "parity.md").is_file(), result.err
    result = kdeploy("verify", version, "--endpoint", "127.0.0.1:1")
    assert result.code == 2 and "has no manifest.json: --endpoint compares" in result.err, result.err

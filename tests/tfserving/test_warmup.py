"""TF Serving's warm-up records (`assets.extra/tf_serving_warmup_requests`): written by `kdeploy export` in the form TF
Serving reads (checked with TensorFlow's own TFRecord reader and tensorflow-serving-api's PredictionLog), and
replayed by `kdeploy serve` before a version is AVAILABLE, for kdeploy's exports and for a file written the way TF
Serving's example (`resnet_warmup.py`) writes one."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tests.conftest import start_server
from tests.tfserving.harness import SAVED_MODEL_BUNDLE, model_path, verify_predict_request

pytestmark = pytest.mark.slow

WARMUP = ("assets.extra", "tf_serving_warmup_requests")


def _tf_records(path) -> list[bytes]:
    import tensorflow as tf

    return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


def test_an_exported_versions_warm_up_file_is_what_tf_serving_reads(exported_repo):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    version = exported_repo / "digits" / "1"
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in _tf_records(version.joinpath(*WARMUP))]
    validation = np.load(version / "validation.npz")["x"]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 3
    for log, rows in zip(logs, (1, 8, 32)):
        request = log.predict_log.request
        assert request.model_spec.name == "digits" and request.model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(tf.make_ndarray(request.inputs["image"]), validation[:rows])


def test_kdeploy_reads_what_tensorflow_writes(tmp_path):
    import tensorflow as tf

    from kdeploy.wire.tfrecord import read_records

    with tf.io.TFRecordWriter(str(tmp_path / "records")) as writer:
        for record in (b"first", b"", b"x" * 5000):
            writer.write(record)
    assert list(read_records(tmp_path / "records")) == [b"first", b"", b"x" * 5000]


def test_an_exported_version_warms_up_in_kdeploy(exported_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo / "digits", repo / "digits")
    shutil.copytree(exported_repo / "tabular", repo / "tabular")
    (repo / "tabular" / "1").joinpath(*WARMUP).write_bytes(b"\x01\x02 not a TFRecord")  # a corrupt file
    server = start_server("--repository", repo, "--log-format", "text")  # onnx: the records fit any backend
    try:
        assert "digits:1(AVAILABLE)" in server.banner and "tabular:1(END)" in server.banner, server.banner
    finally:
        assert server.stop() == 0
    log = server.log()
    assert re.search(r"model digits version 1: 3 warm-up records replayed", log), log
    assert "tabular version 1 failed to load: warm-up file" in log


def test_a_warm_up_file_written_as_tf_serving_documents_it_is_replayed(tmp_path):
    """TF Serving's resnet_warmup.py: PredictLog records of the official PredictRequest, written with
    tf.io.TFRecordWriter, in the SavedModel's assets.extra; a SessionRun record fails the load, as in TF Serving."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    base = tmp_path / "half_plus_two"
    shutil.copytree(model_path(SAVED_MODEL_BUNDLE), base)
    version = base / "00000123"
    (version / WARMUP[0]).mkdir()
    spec = model_pb2.ModelSpec(name="resnet", signature_name="serving_default")  # the name is not the served one
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    with tf.io.TFRecordWriter(str(version.joinpath(*WARMUP))) as writer:
        for _ in range(10):
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    server = start_server("--model-dir", base, "--model-name", "default", "--backend", "savedmodel",
                          "--log-format", "text")
    try:
        verify_predict_request(server.grpc, expected_output=3.0, expected_version=123)
    finally:
        assert server.stop() == 0
    assert "model default version 123: 10 warm-up records replayed" in server.log()

    with tf.io.TFRecordWriter(str(version.joinpath(*WARMUP))) as writer:
        writer.write(prediction_log_pb2.PredictionLog(session_run_log=prediction_log_pb2.SessionRunLog())
                     .SerializeToString())
    server = start_server("--model-dir", base, "--model-name", "default", "--backend", "savedmodel",
                          "--wait-for-models", "--log-format", "text")
    try:
        assert "default:123(END)" in server.banner, server.banner
    finally:
        assert server.stop() == 0
    assert "Unsupported log_type for warmup: session_run_log" in server.log()

import json
from pathlib import Path

import numpy as np
import pytest

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import Artifact, Manifest, write_manifest
from kdeploy.contract.signature import ModelSignature, TensorSpec
from kdeploy.loadtest.config import WorkloadSettings
from kdeploy.loadtest.payloads import (
    build_payloads,
    encode_payloads,
    model_infer_request_bytes,
    predict_request_bytes,
    request_feeds,
    rest_predict_body,
    version_dir_for,
)
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import ndarray_from_kserve, ndarray_from_tensor_proto

PROTOS = load_protos()
SIGNATURE = ModelSignature(
    inputs=(TensorSpec("pixels", "float32", (None, 6)), TensorSpec("meta", "int32", (None, 3), (0.0, 9.0))),
    outputs=(TensorSpec("label", "float32", (None, 4)),),
)


def write_version(repo: Path, name: str, version: int = 1, rows: int | None = 5) -> Path:
    """A version folder with just a manifest (and validation rows): all a load test reads."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    if rows is not None:
        np.savez(folder / "validation.npz", pixels=np.arange(rows * 6, dtype=np.float32).reshape(rows, 6),
                 meta=np.arange(rows * 3, dtype=np.int32).reshape(rows, 3) % 10, y=np.zeros(rows))
    write_manifest(folder, Manifest(name=name, version=version, signature=SIGNATURE,
                                    source=Artifact("keras", "model.keras", 0, "0" * 64), artifacts={},
                                    validation_data="validation.npz" if rows is not None else None))
    return folder


def test_version_dir_from_a_repository_a_model_folder_or_a_version_folder(tmp_path):
    version = write_version(tmp_path, "two")
    assert version_dir_for(tmp_path, "two", None) == version
    # A payload built from one model's folder can be sent to a model served under another name.
    assert version_dir_for(tmp_path / "two", "other", None) == version
    assert version_dir_for(version, "other", None) == version
    with pytest.raises(UsageError, match="no model 'nope'"):
        version_dir_for(tmp_path, "nope", None)
    with pytest.raises(UsageError, match="does not exist"):
        version_dir_for(tmp_path / "missing", "two", None)


def test_request_feeds_take_consecutive_batches_and_wrap_around():
    rows = {"pixels": np.arange(5 * 6, dtype=np.float32).reshape(5, 6), "meta": np.zeros((5, 3), np.int32)}
    feeds = request_feeds(SIGNATURE, 2, rows)
    assert len(feeds) == 2 and feeds[1]["pixels"][:, 0].tolist() == [12.0, 18.0]
    wrapped = request_feeds(SIGNATURE, 8, rows)
    assert len(wrapped) == 1 and wrapped[0]["pixels"][:, 0].tolist() == [0, 6, 12, 18, 24, 0, 6, 12]


def test_generated_inputs_fit_the_signature_and_the_range():
    feeds = request_feeds(SIGNATURE, 3, None, seed=1)
    assert len(feeds) == 16
    for feed in feeds:
        SIGNATURE.validate_feed(feed)
        assert feed["meta"].min() >= 0 and feed["meta"].max() <= 9


def test_fixed_batch_dimension_must_be_asked_for():
    fixed = ModelSignature(inputs=(TensorSpec("x", "float32", (4, 2)),), outputs=())
    with pytest.raises(UsageError, match="--batch 4"):
        request_feeds(fixed, 1, None)
    assert request_feeds(fixed, 4, None)[0]["x"].shape == (4, 2)


def test_predict_request_uses_tensor_content_and_names_the_signature():
    feed = request_feeds(SIGNATURE, 2, None)[0]
    request = PROTOS.cls("tensorflow.serving.PredictRequest").FromString(predict_request_bytes(PROTOS, "two", 3, feed))
    assert request.model_spec.name == "two" and request.model_spec.version.value == 3
    assert request.model_spec.signature_name == "serving_default"
    for spec in SIGNATURE.inputs:
        tensor = request.inputs[spec.name]
        assert tensor.tensor_content and not tensor.float_val and not tensor.int_val
        assert np.array_equal(ndarray_from_tensor_proto(spec.name, tensor, spec), feed[spec.name])


def test_model_infer_request_uses_raw_input_contents():
    feed = request_feeds(SIGNATURE, 2, None)[0]
    request = PROTOS.cls("inference.ModelInferRequest").FromString(model_infer_request_bytes(PROTOS, "two", None, feed))
    assert request.model_name == "two" and request.model_version == ""
    assert len(request.raw_input_contents) == 2
    for tensor, raw in zip(request.inputs, request.raw_input_contents):
        spec = SIGNATURE.input(tensor.name)
        back = ndarray_from_kserve(tensor.name, tensor.datatype, list(tensor.shape), None, raw, spec)
        assert np.array_equal(back, feed[tensor.name])


def test_rest_body_is_columnar_json():
    feed = request_feeds(SIGNATURE, 2, None)[0]
    body = json.loads(rest_predict_body(feed))
    assert body["signature_name"] == "serving_default"
    assert np.array_equal(np.asarray(body["inputs"]["pixels"], np.float32), feed["pixels"])


def test_encode_names_requests_per_protocol():
    feeds = request_feeds(SIGNATURE, 1, None)
    settings = dict(model="two", repository=Path("r"), model_version=2)
    rest = encode_payloads(WorkloadSettings(protocol="tfserving-rest", **settings), feeds)
    assert rest.path == "/v1/models/two/versions/2:predict" and rest.request_type == "POST"
    kserve = encode_payloads(WorkloadSettings(protocol="kserve-grpc", **settings), feeds)
    assert kserve.path == "/inference.GRPCInferenceService/ModelInfer" and kserve.name == "ModelInfer two"
    assert len(kserve.bodies) == 16 and len(set(kserve.bodies)) == 16
    v2 = encode_payloads(WorkloadSettings(protocol="kserve-rest", **settings), feeds)
    assert v2.path == v2.name == "/v2/models/two/versions/2/infer" and v2.request_type == "POST"
    assert len(v2.header_lengths) == len(v2.bodies) == 16


def test_kserve_rest_bodies_are_binary_tensors_the_server_reads_back():
    from kdeploy.wire.kserve_rest import infer_request_from_body, ndarray_from_rest

    feed = request_feeds(SIGNATURE, 3, None)[0]
    payloads = encode_payloads(WorkloadSettings(protocol="kserve-rest", model="two", repository=Path("r")), [feed])
    body, length = payloads.bodies[0], payloads.header_lengths[0]
    header = json.loads(body[:length])
    assert header["parameters"] == {"binary_data_output": True}
    assert all("binary_data_size" in t["parameters"] for t in header["inputs"])
    request = infer_request_from_body(body, length)
    for tensor in request.inputs:
        assert np.array_equal(ndarray_from_rest(tensor, SIGNATURE.input(tensor.name)), feed[tensor.name])


def test_build_payloads_from_the_repository_uses_validation_rows_or_data(tmp_path):
    write_version(tmp_path, "two", rows=5)
    payloads = build_payloads(WorkloadSettings(model="two", repository=tmp_path, protocol="tfserving-rest"), "")
    assert len(payloads.bodies) == 5
    first = json.loads(payloads.bodies[0])["inputs"]["pixels"]
    assert first == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    np.savez(tmp_path / "rows.npz", pixels=np.ones((2, 6)), meta=np.ones((2, 3), np.int64))
    settings = WorkloadSettings(model="two", repository=tmp_path, protocol="tfserving-rest", data=tmp_path / "rows.npz")
    assert len(build_payloads(settings, "").bodies) == 2
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 6)))
    with pytest.raises(UsageError, match="expected one per input"):
        build_payloads(WorkloadSettings(model="two", repository=tmp_path, data=tmp_path / "bad.npz"), "")


def test_build_payloads_without_validation_rows_generates_them(tmp_path):
    write_version(tmp_path, "two", rows=None)
    assert len(build_payloads(WorkloadSettings(model="two", repository=tmp_path), "").bodies) == 16

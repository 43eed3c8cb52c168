"""The vendored protocol definitions: up to date with their sources, and wire-compatible with the official ones."""

import subprocess
import sys

import pytest

from kdeploy.wire.protos.build import OUTPUT
from kdeploy.wire.protos.messages import load_protos


def test_descriptor_set_is_built_from_the_committed_sources(tmp_path):
    pytest.importorskip("grpc_tools")
    fresh = tmp_path / "descriptors.binpb"
    subprocess.run([sys.executable, "-m", "kdeploy.wire.protos.build", str(fresh)], check=True, capture_output=True)
    assert fresh.read_bytes() == OUTPUT.read_bytes(), "run `make protos` and commit serve/protos/descriptors.binpb"


def _fields(descriptor) -> dict[str, tuple]:
    return {f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None,
                     f.enum_type.full_name if f.enum_type else None) for f in descriptor.fields}


def _assert_subset(ours, official, path=""):
    """Every field we declare exists in the official message with the same number, type and cardinality."""
    theirs = _fields(official)
    for name, spec in _fields(ours).items():
        assert name in theirs, f"{path}{ours.full_name}.{name} is not in the official definition"
        assert spec == theirs[name], f"{path}{ours.full_name}.{name}: ours {spec}, official {theirs[name]}"
    for nested in ours.nested_types:
        _assert_subset(nested, official.nested_types_by_name[nested.name], path)


COMPLETE_COPIES = {
    "tensorflow_serving.apis.classification_pb2": ["Class", "Classifications", "ClassificationResult",
                                                   "ClassificationRequest", "ClassificationResponse"],
    "tensorflow_serving.apis.regression_pb2": ["Regression", "RegressionResult", "RegressionRequest",
                                               "RegressionResponse"],
    "tensorflow_serving.apis.inference_pb2": ["InferenceTask", "InferenceResult", "MultiInferenceRequest",
                                              "MultiInferenceResponse"],
    "tensorflow_serving.apis.input_pb2": ["ExampleList", "ExampleListWithContext", "Input"],
    "tensorflow.core.example.example_pb2": ["Example"],
    "tensorflow.core.example.feature_pb2": ["BytesList", "FloatList", "Int64List", "Feature", "Features"],
    "tensorflow_serving.apis.model_management_pb2": ["ReloadConfigRequest", "ReloadConfigResponse", "Metric"],
}
"""Messages vendored whole: every official field is declared too, not only a subset."""


@pytest.mark.parametrize("module, names", [
    ("tensorflow_serving.apis.predict_pb2", ["PredictRequest", "PredictResponse"]),
    ("tensorflow_serving.apis.get_model_metadata_pb2",
     ["GetModelMetadataRequest", "GetModelMetadataResponse", "SignatureDefMap"]),
    ("tensorflow_serving.apis.get_model_status_pb2",
     ["GetModelStatusRequest", "GetModelStatusResponse", "ModelVersionStatus"]),
    ("tensorflow_serving.apis.model_pb2", ["ModelSpec"]),
    ("tensorflow_serving.config.model_server_config_pb2", ["ModelServerConfig", "ModelConfigList", "ModelConfig"]),
    ("tensorflow.core.framework.tensor_pb2", ["TensorProto"]),
    ("tensorflow_serving.apis.prediction_log_pb2", ["PredictionLog", "PredictLog", "ClassifyLog", "RegressLog",
                                                    "MultiInferenceLog", "PredictStreamedLog", "SessionRunLog"]),
    ("tensorflow_serving.apis.logging_pb2", ["LogMetadata"]),
    ("tensorflow.core.protobuf.meta_graph_pb2", ["TensorInfo", "SignatureDef"]),
    ("tritonclient.grpc.service_pb2", ["ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse",
                                       "ModelStatisticsResponse", "ModelStatistics", "InferStatistics",
                                       "ServerMetadataResponse", "ModelReadyRequest", "ModelConfigResponse"]),
    ("tritonclient.grpc.model_config_pb2", ["ModelConfig", "ModelInput", "ModelOutput", "ModelDynamicBatching",
                                            "ModelWarmup",
                                            "ModelVersionPolicy", "ModelInstanceGroup"]),
    *COMPLETE_COPIES.items(),
])
def test_messages_match_the_official_definitions(module, names):
    official = pytest.importorskip(module)
    protos = load_protos()
    package = official.DESCRIPTOR.package
    for name in names:
        ours = protos.pool.FindMessageTypeByName(f"{package}.{name}")
        _assert_subset(ours, official.DESCRIPTOR.message_types_by_name[name])


@pytest.mark.parametrize("module, names", COMPLETE_COPIES.items())
def test_complete_copies_declare_every_official_field(module, names):
    official = pytest.importorskip(module)
    protos = load_protos()
    for name in names:
        ours = protos.pool.FindMessageTypeByName(f"{official.DESCRIPTOR.package}.{name}")
        theirs = official.DESCRIPTOR.message_types_by_name[name]
        assert _fields(ours) == _fields(theirs), name
        assert [o.name for o in ours.oneofs] == [o.name for o in theirs.oneofs], name


def test_prediction_service_declares_every_official_rpc():
    official = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2")
    theirs = official.DESCRIPTOR.services_by_name["PredictionService"]
    ours = load_protos().pool.FindServiceByName("tensorflow.serving.PredictionService")
    assert {m.name: (m.input_type.full_name, m.output_type.full_name) for m in ours.methods} == {
        m.name: (m.input_type.full_name, m.output_type.full_name) for m in theirs.methods}


def test_model_service_declares_every_official_rpc():
    official = pytest.importorskip("tensorflow_serving.apis.model_service_pb2")
    theirs = official.DESCRIPTOR.services_by_name["ModelService"]
    ours = load_protos().pool.FindServiceByName("tensorflow.serving.ModelService")
    assert {m.name: (m.input_type.full_name, m.output_type.full_name) for m in ours.methods} == {
        m.name: (m.input_type.full_name, m.output_type.full_name) for m in theirs.methods}


def test_tensorflow_data_types_have_the_official_numbers():
    official = pytest.importorskip("tensorflow.core.framework.types_pb2")
    ours = load_protos().pool.FindEnumTypeByName("tensorflow.DataType")
    theirs = {v.name: v.number for v in official.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert all(theirs.get(v.name) == v.number for v in ours.values)


def test_enums_match():
    from tritonclient.grpc import model_config_pb2

    protos = load_protos()
    ours = protos.pool.FindEnumTypeByName("inference.DataType")
    theirs = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}

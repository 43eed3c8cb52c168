"""`kdeploy configs`: the files parse with the official TF Serving and Triton definitions and name the right things."""

from google.protobuf import text_format

from kdeploy.wire.protos.messages import load_protos


def test_tfserving_and_triton_configs(exported_repo, tmp_path, kdeploy):
    from tensorflow_serving.config import model_server_config_pb2
    from tritonclient.grpc import model_config_pb2

    result = kdeploy("configs", "--repository", exported_repo, "--out", tmp_path, "--model", "digits",
                     "--model", "two", "--base-path", "/srv/models", "--triton-into-repository")
    assert result.code == 0, result.err
    config = text_format.Parse((tmp_path / "tfserving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"digits", "two"}
    assert entries["digits"].base_path == "/srv/models/digits" and entries["digits"].model_platform == "tensorflow"
    assert entries["two"].model_version_policy.latest.num_versions == 1

    triton = text_format.Parse(
        (tmp_path / "triton" / "two" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert triton.name == "two" and triton.platform == "onnxruntime_onnx" and triton.max_batch_size == 32
    assert {(i.name, i.data_type, tuple(i.dims)) for i in triton.input} == {
        ("pixels", model_config_pb2.TYPE_FP32, (6,)), ("meta", model_config_pb2.TYPE_FP32, (3,))}
    assert {(o.name, tuple(o.dims)) for o in triton.output} == {("label", (4,)), ("score", (1,))}
    assert triton.dynamic_batching.max_queue_delay_microseconds == 1000
    # Triton warms the model up on zeros of one row and of max_batch_size rows before it is ready.
    assert [(w.name, w.batch_size, w.count) for w in triton.model_warmup] == [("zeros_batch_1", 1, 1),
                                                                             ("zeros_batch_32", 32, 1)]
    for warmup in triton.model_warmup:
        assert {(k, i.data_type, tuple(i.dims), i.zero_data) for k, i in warmup.inputs.items()} == {
            ("pixels", model_config_pb2.TYPE_FP32, (6,), True), ("meta", model_config_pb2.TYPE_FP32, (3,), True)}
    assert (exported_repo / "two" / "config.pbtxt").read_text() == (
        tmp_path / "triton" / "two" / "config.pbtxt"
    ).read_text()

    protos = load_protos()
    batching = text_format.Parse((tmp_path / "tfserving" / "batching_parameters.txt").read_text(),
                                 protos.cls("tensorflow.serving.BatchingParameters")(), descriptor_pool=protos.pool)
    assert batching.max_batch_size.value == 32 and list(batching.allowed_batch_sizes)[-1] == 32
    monitoring = text_format.Parse((tmp_path / "tfserving" / "monitoring.config").read_text(),
                                   protos.cls("tensorflow.serving.MonitoringConfig")(), descriptor_pool=protos.pool)
    assert monitoring.prometheus_config.enable
    assert "--model_config_file=/config/models.config" in (tmp_path / "tfserving" / "README.md").read_text()


def test_tfserving_model_config_drives_kdeploy_serve_too(exported_repo, tmp_path, kdeploy):
    from kdeploy.serve.sources import sources_from_model_config

    result = kdeploy("configs", "--repository", exported_repo, "--out", tmp_path, "--base-path", str(exported_repo))
    assert result.code == 0
    sources = {s.name: s for s in sources_from_model_config(tmp_path / "tfserving" / "models.config")}
    assert sources["digits"].base_path == exported_repo / "digits" and sources["digits"].policy.num_versions == 1


def test_bad_batch_sizes_are_a_usage_error(exported_repo, tmp_path, kdeploy):
    result = kdeploy("configs", "--repository", exported_repo, "--out", tmp_path, "--allowed-batch-sizes", "1,2,4")
    assert result.code == 2 and "must equal --max-batch-size" in result.err

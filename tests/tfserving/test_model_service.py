"""`ModelService/HandleReloadConfigRequest` with the official stub, answered as TF Serving's ModelServiceImpl and
ServerCore::ReloadConfig answer it (TF Serving has no model-server test of it; these follow its code): the new config
supersedes the old one, a config TF Serving refuses gets its status code, and the server keeps what it served.
kdeploy accepts the RPC only with `--allow-config-reload`.
"""

from __future__ import annotations

import grpc
import pytest

from tests.tfserving.harness import (
    HALF_PLUS_THREE,
    RPC_TIMEOUT,
    SAVED_MODEL_BUNDLE,
    model_path,
    verify_predict_request,
)

pytestmark = pytest.mark.slow


def _reload(address: str, models: list[tuple[str, str]], *, labels: dict[str, int] | None = None,
            metric_names: tuple[str, ...] = (), empty: bool = False):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.metric_names.extend(metric_names)
    if not empty:
        request.config.model_config_list.SetInParent()
    for name, base_path in models:
        config = request.config.model_config_list.config.add()
        config.name, config.base_path, config.model_platform = name, base_path, "tensorflow"
        for label, version in (labels or {}).items():
            config.version_labels[label] = version
    with grpc.insecure_channel(address) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, RPC_TIMEOUT)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


@pytest.fixture(scope="module")
def address(servers) -> str:
    return servers.run_server("half_plus_two", model_path(SAVED_MODEL_BUNDLE), extra=("--allow-config-reload",)).grpc


def test_a_reload_request_replaces_the_served_models(address):
    two, three = str(model_path(SAVED_MODEL_BUNDLE)), str(model_path(HALF_PLUS_THREE))
    response = _reload(address, [("half_plus_three", three)], metric_names=("/tensorflow/serving/load_attempt_count",))
    assert response.status.error_code == 0
    assert [(m.name, m.int64_value_increase) for m in response.metric] == [
        ("/tensorflow/serving/load_attempt_count", 0)]
    verify_predict_request(address, model_name="half_plus_three", expected_output=4.0, expected_version=123)
    error = _error(lambda: verify_predict_request(address, model_name="half_plus_two", expected_output=3.0,
                                                  expected_version=123))
    assert error.code() is grpc.StatusCode.NOT_FOUND  # left out of the new config: unloaded
    assert _reload(address, [("half_plus_two", two), ("half_plus_three", three)],
                   labels={"stable": 123}).status.error_code == 0
    verify_predict_request(address, model_name="half_plus_two", expected_output=3.0, expected_version=123)


@pytest.mark.parametrize("models, labels, empty, code, words", [
    ([("a", "/x"), ("a", "/y")], None, False, grpc.StatusCode.INVALID_ARGUMENT,
     "Illegal to list model a multiple times in config list"),
    ([("a", "relative/path")], None, False, grpc.StatusCode.INVALID_ARGUMENT,
     "Expected model a to have an absolute path or URI; got base_path()=relative/path"),
    ([], None, True, grpc.StatusCode.INVALID_ARGUMENT, "Only ModelConfigList is currently supported"),
    ([("half_plus_two", str(model_path(SAVED_MODEL_BUNDLE)))], {"canary": 7}, False,
     grpc.StatusCode.FAILED_PRECONDITION, "Request to assign label to version 7 of model half_plus_two, which is "
                                          "not currently available for inference"),
], ids=["duplicate-name", "relative-path", "no-model-config-list", "label-to-unavailable-version"])
def test_configs_tf_serving_refuses_get_its_status(address, models, labels, empty, code, words):
    error = _error(lambda: _reload(address, models, labels=labels, empty=empty))
    assert error.code() is code and words in error.details(), error.details()
    # What was served before a refused config is still served.
    verify_predict_request(address, model_name="half_plus_two", expected_output=3.0, expected_version=123)


def test_the_rpc_is_refused_unless_the_server_allows_it(servers):
    address = servers.run_server("default", model_path(SAVED_MODEL_BUNDLE)).grpc
    error = _error(lambda: _reload(address, [("other", str(model_path(HALF_PLUS_THREE)))]))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and "--allow-config-reload" in error.details()
    verify_predict_request(address, expected_output=3.0, expected_version=123)

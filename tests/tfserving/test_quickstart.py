"""A TF Serving user's first steps, on a copy of TF Serving's test data folder, unchanged.

- The REST quickstart of TF Serving's README (`docker run ... -e MODEL_NAME=half_plus_two` over
  `saved_model_half_plus_two_cpu`, then `curl -d '{"instances": [1.0, 2.0, 5.0]}' .../v1/models/half_plus_two:predict`
  answers `{"predictions": [2.5, 3.0, 4.5]}`), with `kdeploy serve --model-dir ... --model-name half_plus_two`.
- TF Serving's example client `tensorflow_model_server_test_client.py` (model `default`, x = 2.0 as a scalar in
  `float_val`, output filter `y`), with the official stub.
- The whole folder as a repository: every SavedModel in it is served under its folder's name (`00000123` is version
  123), and the folders that hold only TFLite models are named as not servable by the savedmodel backend.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import grpc
import pytest

from tests.conftest import start_server
from tests.tfserving.harness import RPC_TIMEOUT, TESTDATA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def testdata_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("tfs") / "testdata"
    shutil.copytree(TESTDATA, copy)
    return copy


def test_rest_quickstart_answers_as_tf_serving_does(servers, testdata_copy):
    server = servers.run_server("half_plus_two", testdata_copy / "saved_model_half_plus_two_cpu")
    request = urllib.request.Request(f"http://{server.rest}/v1/models/half_plus_two:predict",
                                     data=b'{"instances": [1.0, 2.0, 5.0]}', method="POST")
    with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        assert json.loads(response.read()) == {"predictions": [2.5, 3.0, 4.5]}


def test_tf_serving_example_client_is_answered(servers, testdata_copy):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    server = servers.run_server("default", testdata_copy / "saved_model_half_plus_two_cpu")
    request = predict_pb2.PredictRequest()  # exactly what tensorflow_model_server_test_client.py sends
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.output_filter.append("y")
    with grpc.insecure_channel(server.grpc) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 5.0)
    assert list(result.outputs["y"].float_val) == [3.0] and result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123


def test_the_test_data_folder_is_served_as_a_repository(testdata_copy):
    server = start_server("--repository", testdata_copy, "--backend", "savedmodel")
    try:
        for name in ("saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu", "saved_model_counter",
                     "saved_model_half_plus_three"):
            assert f"{name}:123(AVAILABLE)" in server.banner, server.banner
        assert "saved_model_half_plus_two_2_versions:124(AVAILABLE)" in server.banner
        unservable = server.banner.split("unservable=")[1].split(",")
        assert sorted(unservable) == ["parse_example_tflite", "saved_model_half_plus_two_tflite",
                                      "saved_model_half_plus_two_tflite_with_sigdef"]
        for name, body, expected in (
                ("saved_model_half_plus_two_tf2_cpu", {"instances": [1.0, 2.0, 5.0]}, [2.5, 3.0, 4.5]),
                ("saved_model_half_plus_three", {"instances": [1.0, 2.0, 5.0]}, [3.5, 4.0, 5.5])):
            request = urllib.request.Request(f"http://{server.rest}/v1/models/{name}:predict",
                                             data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
                assert json.loads(response.read()) == {"predictions": expected}
    finally:
        assert server.stop() == 0
    assert sorted(p.name for p in (testdata_copy / "saved_model_half_plus_two_cpu").iterdir()) == ["00000123"]

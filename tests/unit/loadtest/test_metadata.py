import socket
import threading

import pytest
from google.protobuf import json_format

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import ModelSignature, TensorSpec
from kdeploy.loadtest.metadata import (
    fetch_signature,
    signature_from_kserve_metadata,
    signature_from_rest_metadata,
    signature_from_tfserving_metadata,
)
from kdeploy.wire.protos.messages import load_protos

PROTOS = load_protos()
EXPECTED = ModelSignature(
    inputs=(TensorSpec("meta", "int32", (None, 3)), TensorSpec("pixels", "float32", (None, 6))),
    outputs=(TensorSpec("label", "float32", (None, 4)),),
)


def signature_def_map(**extra_inputs):
    signature_map = PROTOS.cls("tensorflow.serving.SignatureDefMap")()
    signature_def = signature_map.signature_def["serving_default"]
    for name, dtype, dims in (("pixels", 1, [-1, 6]), ("meta", 3, [-1, 3])):
        info = signature_def.inputs[name]
        info.name, info.dtype = f"serving_default_{name}:0", dtype
        for size in dims:
            info.tensor_shape.dim.add().size = size
    out = signature_def.outputs["label"]
    out.dtype = 1
    for size in (-1, 4):
        out.tensor_shape.dim.add().size = size
    for name, dtype in extra_inputs.items():
        signature_def.inputs[name].dtype = dtype
    return signature_map


def test_tfserving_metadata_response():
    response = PROTOS.cls("tensorflow.serving.GetModelMetadataResponse")()
    response.metadata["signature_def"].Pack(signature_def_map())
    assert signature_from_tfserving_metadata(response, PROTOS) == EXPECTED


def test_tfserving_metadata_without_a_signature_map_or_with_strings():
    with pytest.raises(UsageError, match="no SignatureDefMap"):
        signature_from_tfserving_metadata(PROTOS.cls("tensorflow.serving.GetModelMetadataResponse")(), PROTOS)
    response = PROTOS.cls("tensorflow.serving.GetModelMetadataResponse")()
    response.metadata["signature_def"].Pack(signature_def_map(text=7))  # DT_STRING
    with pytest.raises(UsageError, match="cannot send"):
        signature_from_tfserving_metadata(response, PROTOS)


def test_rest_metadata_json_as_tf_serving_writes_it():
    body = {"model_spec": {"name": "two"},
            "metadata": {"signature_def": json_format.MessageToDict(signature_def_map())}}
    assert signature_from_rest_metadata(body, PROTOS) == EXPECTED
    with pytest.raises(UsageError, match=r"metadata\.signature_def"):
        signature_from_rest_metadata({"error": "x"}, PROTOS)


def test_kserve_metadata_response():
    response = PROTOS.cls("inference.ModelMetadataResponse")(name="two")
    response.inputs.add(name="meta", datatype="INT32", shape=[-1, 3])
    response.inputs.add(name="pixels", datatype="FP32", shape=[-1, 6])
    response.outputs.add(name="label", datatype="FP32", shape=[-1, 4])
    assert signature_from_kserve_metadata(response) == EXPECTED
    response.inputs.add(name="text", datatype="BYTES", shape=[-1])
    with pytest.raises(UsageError, match="BYTES"):
        signature_from_kserve_metadata(response)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call_with_timeout(seconds: float, function, *args):
    """`function(*args)` on a daemon thread: its result, or what it raised; fails the test if it hangs."""
    outcome: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(seconds):
        pytest.fail(f"{function.__name__} did not return within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.parametrize("protocol", ["tfserving-grpc", "kserve-grpc", "tfserving-rest", "kserve-rest"])
def test_unreachable_target_is_a_usage_error_within_the_timeout(protocol):
    # The call must give up rather than hang: a hang fails at the thread's timeout, and the error names the
    # 3 s limit it applied (no wall-clock assertion: a busy machine may take longer than 3 s to get there).
    with pytest.raises(UsageError, match=r"cannot reach .* within 3 s"):
        call_with_timeout(60, fetch_signature, protocol, f"127.0.0.1:{closed_port()}", "m", None, 3.0)

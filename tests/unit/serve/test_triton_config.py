"""A Triton config.pbtxt refines the signature read from a bare ONNX model, or says exactly why it does not fit."""

import pytest

from kdeploy.common.errors import KdeployError
from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import ModelSignature, TensorSpec
from kdeploy.serve.triton_config import apply_triton_config

GRAPH = Manifest(name="m", version=1, source=None, artifacts={}, signature=ModelSignature(
    inputs=(TensorSpec("INPUT0", "float32", (None, None)),), outputs=(TensorSpec("OUTPUT0", "int64", (None, 2)),)))


def _apply(tmp_path, text):
    (tmp_path / "config.pbtxt").write_text(text)
    return apply_triton_config(GRAPH, tmp_path / "config.pbtxt")


def test_dims_the_graph_leaves_open_are_fixed_by_the_config(tmp_path):
    manifest, batch = _apply(tmp_path, 'max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] } ]')
    assert batch == 8 and manifest.signature.inputs[0].shape == (None, 16)
    assert manifest.signature.outputs == GRAPH.signature.outputs  # left out of the config: the graph's own
    manifest, batch = _apply(tmp_path, 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4, 16 ] } ]')
    assert batch == 0 and manifest.signature.inputs[0].shape == (4, 16)  # no implicit batch dimension


@pytest.mark.parametrize(("text", "message"), [
    ('max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]',
     r"input 'IN' is not one of the model's inputs \['INPUT0'\]"),
    ('max_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_FP64 dims: [ 3 ] } ]',
     r"input 'INPUT0' is TYPE_FP64 there, but float32 \(TYPE_FP32\) in the model"),
    ('max_batch_size: 8\noutput [ { name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 3 ] } ]',
     r"output 'OUTPUT0' has dims \[-1, 3\] there \(with the batch dimension\), but \[-1, 2\] in the model"),
    ("max_batch_size: eight", "cannot read"),
])
def test_a_config_that_does_not_fit_the_model_is_named(tmp_path, text, message):
    with pytest.raises(KdeployError, match=message):
        _apply(tmp_path, text)

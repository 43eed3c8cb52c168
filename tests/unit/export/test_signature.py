import numpy as np
import pytest

from kdeploy.contract.signature import (
    ModelSignature,
    SignatureError,
    TensorSpec,
    batch_size,
    dtype_by_name,
    dtype_by_onnx,
    dtype_by_tf_enum,
    feed_from_arrays,
)

SIG = ModelSignature(
    inputs=(TensorSpec("image", "float32", (None, 8, 8, 1)), TensorSpec("tokens", "int32", (None, 5), (0, 49))),
    outputs=(TensorSpec("probabilities", "float32", (None, 10)),),
)


def test_json_round_trip_uses_minus_one_for_dynamic_dimensions():
    data = SIG.to_json()
    assert data["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert data["inputs"][1]["range"] == [0, 49]
    assert ModelSignature.from_json(data) == SIG


def test_dtype_table_names_each_protocol():
    fp32 = dtype_by_name("float32")
    assert (fp32.tf_enum, fp32.kserve, fp32.onnx) == (1, "FP32", "tensor(float)")
    with pytest.raises(SignatureError, match="unsupported dtype"):
        dtype_by_name("complex64")


def test_validate_feed_names_the_input_the_expectation_and_what_came():
    good = SIG.generate_feed(3, np.random.default_rng(0))
    assert set(SIG.validate_feed(good)) == {"image", "tokens"}
    with pytest.raises(SignatureError, match=r"input 'image': expected shape \[-1, 8, 8, 1\], got \[3, 8, 8\]"):
        SIG.validate_feed({**good, "image": np.zeros((3, 8, 8), np.float32)})
    with pytest.raises(SignatureError, match="input 'tokens': expected dtype int32, got float32"):
        SIG.validate_feed({**good, "tokens": np.zeros((3, 5), np.float32)})
    with pytest.raises(SignatureError, match="missing input 'tokens'"):
        SIG.validate_feed({"image": good["image"]})
    with pytest.raises(SignatureError, match="unknown input 'extra'"):
        SIG.validate_feed({**good, "extra": good["image"]})
    with pytest.raises(SignatureError, match="disagree on the batch size"):
        SIG.validate_feed({**good, "tokens": good["tokens"][:2]})


def test_cast_converts_same_kind_only():
    spec = TensorSpec("x", "float32", (None, 2))
    assert spec.check(np.ones((1, 2), np.float64), cast=True).dtype == np.float32
    with pytest.raises(SignatureError):
        TensorSpec("t", "int32", (None, 2)).check(np.ones((1, 2), np.float64), cast=True)


def test_generated_integer_inputs_stay_in_range():
    feed = SIG.generate_feed(500, np.random.default_rng(1))
    assert feed["tokens"].min() >= 0 and feed["tokens"].max() <= 49
    assert feed["tokens"].dtype == np.int32 and feed["image"].shape == (500, 8, 8, 1)


def test_feed_from_arrays_accepts_x_for_one_input_and_names_for_several():
    one = ModelSignature(inputs=(TensorSpec("features", "float32", (None, 3)),), outputs=SIG.outputs)
    feed, labels = feed_from_arrays({"x": np.ones((4, 3)), "y": np.arange(4)}, one)
    assert feed["features"].dtype == np.float32 and labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(SignatureError, match="expected one per input"):
        feed_from_arrays({"x": np.ones((4, 3))}, SIG)
    with pytest.raises(SignatureError, match="4 inputs but 3 labels"):
        feed_from_arrays({"x": np.ones((4, 3)), "y": np.arange(3)}, one)


def test_string_dtype_is_in_the_table_with_each_protocols_name():
    string = dtype_by_name("string")
    assert (string.tf_enum, string.kserve, string.onnx) == (7, "BYTES", "tensor(string)")
    assert string.numpy == np.dtype(object)


def test_string_inputs_take_str_or_bytes_and_become_object_bytes():
    spec = TensorSpec("words", "string", (None, 2), examples=("cat", "dog"))
    for given in (np.array([["cat", "dog"]]), np.array([[b"cat", b"dog"]]), np.array([["cat", "dog"]], dtype=object)):
        checked = spec.check(given)
        assert checked.dtype == object and checked.tolist() == [[b"cat", b"dog"]]
    with pytest.raises(SignatureError, match="input 'words': expected dtype string, got float32"):
        spec.check(np.zeros((1, 2), np.float32))
    with pytest.raises(SignatureError, match="non-string values"):
        spec.check(np.array([[1, "a"]], dtype=object))


def test_string_examples_round_trip_and_feed_generated_inputs():
    sig = ModelSignature(inputs=(TensorSpec("words", "string", (None, 3), examples=("cat", "dog")),),
                         outputs=(TensorSpec("p", "float32", (None, 2)),))
    assert sig.to_json()["inputs"][0]["examples"] == ["cat", "dog"]
    assert ModelSignature.from_json(sig.to_json()) == sig
    feed = sig.generate_feed(4, np.random.default_rng(0))
    assert feed["words"].shape == (4, 3) and set(feed["words"].ravel()) <= {b"cat", b"dog"}
    assert sig.validate_feed(feed)["words"].dtype == object


def test_manifests_without_strings_or_examples_still_load():
    old = {"name": "serving_default", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]}
    sig = ModelSignature.from_json(old)
    assert sig.inputs[0].examples is None and sig.to_json() == old


def test_without_shape_checks_values_keep_their_shape_and_only_the_dtype_is_checked():
    spec = TensorSpec("x", "float32", (None, 1))
    with pytest.raises(SignatureError, match=r"expected shape \[-1, 1\], got \[2\]"):
        spec.check(np.array([2.0, 3.0], np.float32))  # onnx and tflite keep the clear error
    # A SavedModel is fed as TF Serving feeds it: the graph gets [2] (and half_plus_two answers [2] too).
    assert spec.check(np.array([2.0, 3.0], np.float32), check_shape=False).shape == (2,)
    assert spec.check(np.array(2.0, np.float32), check_shape=False).shape == ()
    with pytest.raises(SignatureError, match="expected dtype float32, got int64"):
        spec.check(np.array([2, 3]), check_shape=False)
    two = ModelSignature(inputs=(spec, TensorSpec("z", "float32", (None, 1))), outputs=(spec,))
    feed = {"x": np.zeros((2, 1), np.float32), "z": np.zeros((3, 1), np.float32)}
    with pytest.raises(SignatureError, match="disagree on the batch size"):
        two.validate_feed(feed)
    assert {k: v.shape for k, v in two.validate_feed(feed, check_shapes=False).items()} == {"x": (2, 1), "z": (3, 1)}
    assert batch_size({"x": np.float32(1.0)}) == 1 and batch_size({}) == 1


def test_a_tensor_of_unknown_rank_takes_any_batch():
    spec = TensorSpec("examples", "string", (None,), any_shape=True)
    assert spec.check(np.array([[b"a", b"b"]], dtype=object)).shape == (1, 2)
    with pytest.raises(SignatureError, match="got a scalar"):
        spec.check(np.array(b"a", dtype=object))
    assert TensorSpec.from_json(spec.to_json()) == spec and spec.to_json()["any_shape"] is True


def test_dtypes_by_tensorflow_enum_and_onnx_type():
    assert dtype_by_tf_enum(1).name == "float32" and dtype_by_tf_enum(7).name == "string"
    assert dtype_by_onnx("tensor(int64)").name == "int64"
    with pytest.raises(SignatureError, match="enum 20"):
        dtype_by_tf_enum(20)  # DT_RESOURCE
    with pytest.raises(SignatureError, match="seq"):
        dtype_by_onnx("seq(tensor(float))")

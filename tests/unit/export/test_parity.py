import numpy as np

from kdeploy.export.parity import DEFAULT_TOLERANCES, batch_schedule, compare_output, precision_of, tolerance_for


def test_batch_schedule_covers_one_mid_and_max():
    assert batch_schedule(100, 32) == [1, 16, 32, 32, 19]
    assert sum(batch_schedule(7, 32)) == 7 and batch_schedule(7, 32)[0] == 1


def test_precision_and_overrides():
    assert precision_of("tflite", {"quantization": "fp16"}) == "fp16"
    assert precision_of("tflite", {"quantization": "dynamic-int8"}) == "int8"
    assert precision_of("onnx", {}) == "fp32"
    tol = tolerance_for("onnx", "fp32", {"onnx": 1e-3}, {})
    assert tol.atol == 1e-3 and tol.rtol == DEFAULT_TOLERANCES["fp32"].rtol


def _probs(rows, rng):
    logits = rng.standard_normal((rows, 4))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_within_fp32_tolerance_passes():
    ref = _probs(50, np.random.default_rng(0))
    result = compare_output("p", ref, ref + 1e-7, DEFAULT_TOLERANCES["fp32"], None)
    assert result.passed and result.label_agreement == 1.0
    assert 0 < result.max_abs < 1e-6


def test_out_of_tolerance_says_by_how_much():
    ref = _probs(50, np.random.default_rng(0))
    bad = ref.copy()
    bad[3, 1] += 0.01
    result = compare_output("p", ref, bad, DEFAULT_TOLERANCES["fp32"], None)
    assert not result.passed
    assert "max abs error 0.01 is over tolerance" in result.failures[0] and "1 of 200 values out" in result.failures[0]


def test_int8_judges_labels_and_accuracy():
    rng = np.random.default_rng(1)
    ref = _probs(100, rng)
    truth = ref.argmax(axis=1)
    flipped = ref.copy()
    flipped[:5] = flipped[:5, ::-1]  # five rows now predict another class
    result = compare_output("p", ref, flipped, DEFAULT_TOLERANCES["int8"], truth)
    assert result.label_agreement <= 0.95 and result.accuracy_drop >= 4.0
    assert len(result.failures) == 2


def test_nan_fails_and_shape_mismatch_fails():
    ref = np.ones((2, 3), np.float32) * 2.0
    assert not compare_output("y", ref, np.full((2, 3), np.nan, np.float32), DEFAULT_TOLERANCES["fp32"], None).passed
    assert not compare_output("y", ref, np.ones((3, 3), np.float32), DEFAULT_TOLERANCES["fp32"], None).passed

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


def test_an_answer_that_breaks_its_own_signature_is_named():
    from kdeploy.contract.signature import ModelSignature, TensorSpec
    from kdeploy.export.verify_bare import signature_problems

    signature = ModelSignature(inputs=(TensorSpec("x", "float32", (None, 2)),),
                               outputs=(TensorSpec("y", "float32", (None, 2)), TensorSpec("z", "int64", (None,))))
    good = {"y": np.zeros((3, 2), np.float32), "z": np.zeros(3, np.int64)}
    assert signature_problems(signature, good, 3) == []
    bad = {"y": np.array([[np.nan, 1.0]] * 3, np.float64)}
    assert signature_problems(signature, bad, 3) == [
        "output 'y' is float64, the signature says float32",
        "output 'y' has non-finite values (NaN or inf)",
        "output 'z' is missing from the answer",
    ]
    assert signature_problems(signature, {**good, "y": np.zeros((3, 5), np.float32)}, 3) == [
        "output 'y' has shape [3, 5] for 3 rows, the signature says [-1, 2]"]


def test_a_format_that_is_the_reference_itself_passes_with_its_note_and_is_not_plotted():
    from kdeploy.export.parity import SAME_AS_REFERENCE, FormatComparison, ParityReport
    from kdeploy.export.parity_report import table_rows, to_markdown

    same = FormatComparison("savedmodel", "fp32", DEFAULT_TOLERANCES["fp32"], note=SAME_AS_REFERENCE)
    report = ParityReport("m", 1, "savedmodel", 8, [1, 4, 3], "generated inputs", [same])
    assert report.passed and same.to_json()["note"] == SAME_AS_REFERENCE
    assert table_rows(report)[0][-1] == f"pass: {SAME_AS_REFERENCE}"
    assert "Reference: savedmodel." in to_markdown(report)
    broken = FormatComparison("onnx", "fp32", DEFAULT_TOLERANCES["fp32"], problems=["could not run: boom"])
    assert "note" not in broken.to_json()
    assert table_rows(ParityReport("m", 1, "keras", 8, [8], "x", [broken]))[0][-1] == "FAIL: could not run: boom"

"""The coverage sweep's zoo covers every public Keras layer class, and its report counts what passed."""

import inspect

import pytest

keras = pytest.importorskip("keras")

from kdeploy.export.coverage.report import summarise  # noqa: E402
from kdeploy.export.coverage.sweep import CELLS, CaseResult  # noqa: E402
from kdeploy.export.coverage.zoo import ACTIVATIONS, NOT_COVERED, all_cases  # noqa: E402


def test_every_public_layer_class_is_in_the_zoo_or_says_why_not():
    aliases: dict[type, set[str]] = {}
    for name in dir(keras.layers):
        if inspect.isclass(getattr(keras.layers, name)):
            aliases.setdefault(getattr(keras.layers, name), set()).add(name)
    known = {c.name for c in all_cases()} | set(NOT_COVERED)
    assert sorted(min(names) for names in aliases.values() if not names & known) == []


def test_every_activation_has_a_row():
    functions = {n for n in dir(keras.activations) if not n.startswith("_")} - {"get", "serialize", "deserialize"}
    assert functions - set(ACTIVATIONS) <= {"swish", "hard_swish"}  # aliases of silu and hard_silu


def test_zoo_names_are_unique_and_cheap_cases_build():
    cases = all_cases()
    assert len({c.name for c in cases}) == len(cases)
    by_name = {c.name: c for c in cases}
    for name in ("Conv2D", "Bidirectional", "HashedCrossing", "activation:glu"):
        assert by_name[name].build().outputs


def test_summary_counts_passes_per_column_and_the_fp32_rate():
    ok = {c: {"status": "pass", "reason": ""} for c in CELLS}
    onnx_fails = {**ok, "onnx": {"status": "fail", "reason": "x"}}
    rows = [CaseResult("Dense", "core", ok), CaseResult("activation:gelu", "activations", onnx_fails),
            CaseResult("application:ResNet50", "applications", onnx_fails)]
    summary = summarise(rows)
    assert summary["counts"]["layer"]["onnx"] == 1 and summary["counts"]["activation"]["onnx"] == 0
    assert (summary["fp32_passed"], summary["fp32_cells"]) == (5, 6)

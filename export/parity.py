"""Parity: run every format on the same inputs, then compare each with the reference (the source model).

Run, then compare (as Polygraphy's Comparator does): `run_backend` gives each format's outputs for the same
feed, cut into batches of 1, a mid size and the maximum so dynamic batching is exercised; `compare_format`
measures the errors against the reference and applies the format's tolerance. The result is a
JSON-serialisable `ParityReport` that is true when every format is within tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kdeploy.contract.signature import Feed, ModelSignature, batch_size, slice_feed
from kdeploy.runtimes.base import Backend

PRECISIONS = ("fp32", "fp16", "int8")
SAME_AS_REFERENCE = "the reference itself (same files), not compared"
"""The note of a format whose artifact is the source the version keeps (a SavedModel source's savedmodel)."""


@dataclass(frozen=True)
class Tolerance:
    """How close a format must be to the reference."""

    atol: float | None
    """Absolute tolerance per element (with `rtol`: |a - b| <= atol + rtol * |b|); None: not checked."""
    rtol: float
    min_label_agreement: float
    """Share of rows whose predicted class must match the reference's (classifier outputs only)."""
    max_accuracy_drop: float
    """Accuracy points a format may lose against the reference on labelled data."""

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "min_label_agreement": self.min_label_agreement,
                "max_accuracy_drop_points": self.max_accuracy_drop}


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, min_label_agreement=1.0, max_accuracy_drop=0.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-3, min_label_agreement=0.99, max_accuracy_drop=1.0),
    "int8": Tolerance(atol=None, rtol=0.0, min_label_agreement=0.98, max_accuracy_drop=1.0),
}
INT8_REGRESSION_TOLERANCE = Tolerance(atol=0.1, rtol=0.1, min_label_agreement=0.98, max_accuracy_drop=1.0)
"""int8 has no label to compare for outputs that are not class scores: fall back to loose elementwise bounds."""


def precision_of(fmt: str, options: Mapping[str, Any]) -> str:
    """The numeric precision a format's artifact was written with (from its manifest options)."""
    if fmt == "tflite":
        quantization = options.get("quantization", "none")
        return {"none": "fp32", "fp16": "fp16"}.get(quantization, "int8")
    return "fp32"


def tolerance_for(fmt: str, precision: str, atol: Mapping[str, float], rtol: Mapping[str, float]) -> Tolerance:
    """The default tolerance of a precision, with per-format `--atol` / `--rtol` overrides applied."""
    tolerance = DEFAULT_TOLERANCES[precision]
    if fmt in atol:
        tolerance = replace(tolerance, atol=atol[fmt])
    if fmt in rtol:
        tolerance = replace(tolerance, rtol=rtol[fmt])
    return tolerance


def batch_schedule(rows: int, max_batch: int) -> list[int]:
    """Batch sizes that cover `rows`: 1, then a mid size, then the maximum, repeated (last one short)."""
    sizes = [1, max(1, max_batch // 2), max_batch]
    schedule: list[int] = []
    done = 0
    while done < rows:
        size = min(sizes[min(len(schedule), 2)], rows - done)
        schedule.append(size)
        done += size
    return schedule


def run_backend(backend: Backend, feed: Feed, schedule: list[int]) -> dict[str, np.ndarray]:
    """Run a feed through a backend in the batch sizes of `schedule` and stitch the outputs back together."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in backend.signature.output_names}
    start = 0
    for size in schedule:
        outputs = backend.infer(slice_feed(feed, start, start + size))
        for name in parts:
            parts[name].append(np.asarray(outputs[name]))
        start += size
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}


@dataclass
class OutputComparison:
    """One output of one format against the reference."""

    output: str
    max_abs: float
    max_rel: float
    mean_abs: float
    label_agreement: float | None = None
    """Share of rows with the same predicted class; None for outputs that are not class scores."""
    accuracy: float | None = None
    reference_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)
    abs_errors: np.ndarray | None = field(default=None, repr=False)
    """Every element's absolute error, kept for the plot (not written to JSON)."""

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy points lost against the reference (negative: the format did better)."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return (self.reference_accuracy - self.accuracy) * 100.0

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "max_abs_error": self.max_abs, "max_rel_error": self.max_rel,
                "mean_abs_error": self.mean_abs, "label_agreement": self.label_agreement,
                "accuracy": self.accuracy, "reference_accuracy": self.reference_accuracy,
                "accuracy_drop_points": self.accuracy_drop, "passed": self.passed, "failures": self.failures}


@dataclass
class FormatComparison:
    """All outputs of one format, or why it could not run."""

    format: str
    precision: str
    tolerance: Tolerance
    outputs: list[OutputComparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Failures that are not about one output: a changed file, a runtime that would not load or run."""
    note: str = ""
    """Why the format was not run (`SAME_AS_REFERENCE`: its files are the reference's own)."""

    @property
    def passed(self) -> bool:
        return not self.problems and all(o.passed for o in self.outputs)

    @property
    def failures(self) -> list[str]:
        return [f"{self.format}: {p}" for p in self.problems] + [
            f"{self.format} output {o.output!r}: {f}" for o in self.outputs for f in o.failures
        ]

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "tolerance": self.tolerance.to_json(),
                "passed": self.passed, "problems": self.problems, "outputs": [o.to_json() for o in self.outputs],
                **({"note": self.note} if self.note else {})}


@dataclass
class ParityReport:
    """The result of one verify run; true when every format is within its tolerance."""

    model: str
    version: int
    reference: str
    samples: int
    batch_sizes: list[int]
    data_source: str
    formats: list[FormatComparison]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.formats) and all(f.passed for f in self.formats)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[str]:
        return [failure for f in self.formats for failure in f.failures]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "reference": self.reference, "passed": self.passed,
                "samples": self.samples, "batch_sizes": self.batch_sizes, "data_source": self.data_source,
                "seconds": round(self.seconds, 3), "failures": self.failures,
                "formats": [f.to_json() for f in self.formats]}


def _is_class_scores(values: np.ndarray) -> bool:
    return (values.ndim == 2 and values.dtype.kind == "f" and values.size > 0
            and float(values.min()) >= 0.0 and float(values.max()) <= 1.0)


def predicted_labels(scores: np.ndarray) -> np.ndarray:
    """Class ids from class scores: argmax, or a 0.5 threshold for a single sigmoid unit."""
    if scores.shape[-1] == 1:
        return (scores[:, 0] > 0.5).astype(np.int64)
    return np.argmax(scores, axis=-1)


def compare_output(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    labels: np.ndarray | None,
) -> OutputComparison:
    """Measure one output's errors and apply the tolerance.

    Args:
        name: the output's name.
        reference: the reference's (the source model's) values.
        candidate: the format's values for the same inputs.
        tolerance: the bounds for this format.
        labels: true labels of the rows, when the data was labelled and this is the model's only class output.
    """
    if candidate.shape != reference.shape:
        return OutputComparison(name, float("inf"), float("inf"), float("inf"),
                                failures=[f"shape {list(candidate.shape)} differs from the reference's "
                                          f"{list(reference.shape)}"])
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    abs_err = np.abs(got - ref)
    finite = bool(np.all(np.isfinite(got)))
    rel_err = abs_err / np.maximum(np.abs(ref), 1e-6)
    result = OutputComparison(
        output=name,
        max_abs=float(abs_err.max()) if abs_err.size else 0.0,
        max_rel=float(rel_err.max()) if rel_err.size else 0.0,
        mean_abs=float(abs_err.mean()) if abs_err.size else 0.0,
        abs_errors=abs_err.ravel(),
    )
    if not finite:
        result.failures.append("non-finite values (NaN or inf) where the reference is finite")
    classifier = _is_class_scores(reference)
    if tolerance.atol is None and not classifier:
        tolerance = INT8_REGRESSION_TOLERANCE
    if tolerance.atol is not None:
        bound = tolerance.atol + tolerance.rtol * np.abs(ref)
        excess = abs_err - bound
        if excess.size and float(excess.max()) > 0:
            worst = int(np.argmax(excess))
            result.failures.append(
                f"max abs error {result.max_abs:.3g} is over tolerance (atol {tolerance.atol:g}, "
                f"rtol {tolerance.rtol:g}); "
                f"{int((excess > 0).sum())} of {excess.size} values out, worst by {float(excess.flat[worst]):.3g}"
            )
    if classifier:
        ref_labels = predicted_labels(reference)
        got_labels = predicted_labels(candidate)
        result.label_agreement = float(np.mean(ref_labels == got_labels)) if ref_labels.size else 1.0
        if result.label_agreement < tolerance.min_label_agreement:
            result.failures.append(
                f"predicted labels agree on {result.label_agreement:.2%} of rows, "
                f"below the {tolerance.min_label_agreement:.2%} required"
            )
        if labels is not None:
            truth = labels.reshape(-1).astype(np.int64)
            result.reference_accuracy = float(np.mean(ref_labels == truth))
            result.accuracy = float(np.mean(got_labels == truth))
            drop = result.accuracy_drop or 0.0
            if drop > tolerance.max_accuracy_drop + 1e-9:
                result.failures.append(
                    f"accuracy {result.accuracy:.2%} is {drop:.2f} points below the reference's "
                    f"{result.reference_accuracy:.2%} (at most {tolerance.max_accuracy_drop:g} allowed)"
                )
    return result


def compare_format(
    fmt: str,
    precision: str,
    tolerance: Tolerance,
    signature: ModelSignature,
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
) -> FormatComparison:
    """Compare every output of one format with the reference."""
    class_outputs = [n for n in signature.output_names if _is_class_scores(reference[n])]
    comparison = FormatComparison(fmt, precision, tolerance)
    for name in signature.output_names:
        # Accuracy needs to know which output the labels belong to: only the single class output qualifies.
        labelled = class_outputs == [name] and labels is not None and labels.shape[0] == batch_size(reference)
        output_labels = labels if labelled else None
        comparison.outputs.append(compare_output(name, reference[name], candidate[name], tolerance, output_labels))
    return comparison

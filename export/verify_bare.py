"""`kdeploy verify` on a version kdeploy did not export (no manifest.json): what can be checked without a source.

Every artifact in the folder (SavedModel, ONNX, TFLite) is loaded by its runtime with the signature it declares and
run on the same inputs (`--data`, or inputs generated from the signature) in every batch size of the schedule. Each
must run, and answer every declared output in the declared dtype and shape with finite values. When the folder holds
several (a repository shared by TF Serving and Triton: saved_model.pb beside model.onnx), each is also compared with
the first (SavedModel, then TFLite, then ONNX) at fp32 tolerance, as export's parity does with the source. The
reports go to `--report` or `./verify-NAME-VERSION/`: the version folder is the user's, and may be read-only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import FORMATS, Manifest, bare_artifact_path, manifest_of_artifact
from kdeploy.contract.signature import ModelSignature, batch_size, format_shape
from kdeploy.export.parity import (
    FormatComparison,
    ParityReport,
    batch_schedule,
    compare_format,
    run_backend,
    tolerance_for,
)
from kdeploy.export.parity_report import write_reports
from kdeploy.export.verify import VerifyConfig, load_inputs
from kdeploy.runtimes.base import load_backend, signatures_of

logger = logging.getLogger(__name__)


def signature_problems(signature: ModelSignature, outputs: Mapping[str, np.ndarray], rows: int) -> list[str]:
    """How a runtime's answer differs from what its signature declares: missing outputs, dtypes, shapes, NaN."""
    problems = []
    for spec in signature.outputs:
        value = outputs.get(spec.name)
        if value is None:
            problems.append(f"output {spec.name!r} is missing from the answer")
            continue
        if value.dtype != spec.np_dtype:
            problems.append(f"output {spec.name!r} is {value.dtype.name}, the signature says {spec.dtype}")
        if not spec.any_shape and (value.ndim != len(spec.shape) or value.shape[0] != rows or any(
                want is not None and got != want for want, got in zip(spec.shape[1:], value.shape[1:]))):
            problems.append(f"output {spec.name!r} has shape {list(value.shape)} for {rows} rows, the signature "
                            f"says {format_shape(spec.shape)}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            problems.append(f"output {spec.name!r} has non-finite values (NaN or inf)")
    return problems


def verify_bare_version(version_dir: Path, config: VerifyConfig | None = None,
                        progress: Callable[[str], None] = logger.info) -> ParityReport:
    """Run and cross-check the artifacts of a version without a manifest; writes the parity reports like
    `verify_version`.

    Raises:
        UsageError: when the folder has no artifact kdeploy can read.
    """
    started = time.perf_counter()
    config = config or VerifyConfig()
    version_dir = Path(version_dir)
    found = {fmt: path for fmt in FORMATS if (path := bare_artifact_path(version_dir, fmt)) is not None}
    if not found:
        raise UsageError(f"{version_dir} has no manifest.json and no artifact kdeploy reads "
                         "(saved_model.pb, model.onnx or one *.onnx, model.tflite or one *.tflite)")
    name, version = version_dir.parent.name, int(version_dir.name) if version_dir.name.isdigit() else 0
    manifest: Manifest | None = None
    reference_name, reference = "", {}
    formats: list[FormatComparison] = []
    feed: dict[str, np.ndarray] = {}
    schedule: list[int] = []
    labels, data_source = None, ""
    for fmt, path in found.items():
        progress(f"verify: {fmt} ({path})")
        tolerance = tolerance_for(fmt, "fp32", config.atol, config.rtol)
        comparison = FormatComparison(fmt, "fp32", tolerance)
        try:
            backend = load_backend(fmt, version_dir, None, artifact_path=path)
            try:
                if manifest is None:
                    manifest = manifest_of_artifact(name, version, version_dir, fmt, path, signatures_of(backend))
                    feed, labels, data_source = load_inputs(version_dir, manifest, config)
                    schedule = batch_schedule(batch_size(feed), config.max_batch)
                outputs = run_backend(backend, feed, schedule)
                problems = signature_problems(backend.signature, outputs, batch_size(feed))
            finally:
                backend.close()
        except UsageError:
            raise
        except Exception as exc:  # a runtime that cannot load or run the artifact is a failure of that format
            logger.debug("backend %s failed", fmt, exc_info=True)
            comparison.problems.append(f"could not run: {exc}")
            formats.append(comparison)
            continue
        comparison.problems.extend(problems)
        if not reference_name:
            reference_name, reference = fmt, outputs
        elif manifest is not None and not problems:
            numeric = dataclasses.replace(manifest.signature, outputs=tuple(
                spec for spec in manifest.signature.outputs if not spec.is_string))
            comparison = compare_format(fmt, "fp32", tolerance, numeric, reference, outputs, labels)
            comparison.problems.extend(
                f"output {spec.name!r} differs from {reference_name}'s" for spec in manifest.signature.outputs
                if spec.is_string and not np.array_equal(outputs[spec.name], reference[spec.name]))
        formats.append(comparison)
    report = ParityReport(model=name, version=version, reference=reference_name or "none",
                          samples=batch_size(feed) if feed else 0, batch_sizes=schedule, data_source=data_source,
                          formats=formats, seconds=time.perf_counter() - started)
    write_reports(report, config.report_dir or Path.cwd() / f"verify-{name}-{version}")
    return report

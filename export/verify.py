"""`kdeploy verify`: prove that every exported format predicts what the source model predicts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import MANIFEST_FILE, Artifact, Manifest, checksum_problems, read_manifest
from kdeploy.contract.signature import batch_size, load_data_file, slice_feed
from kdeploy.export.parity import (
    SAME_AS_REFERENCE,
    FormatComparison,
    ParityReport,
    batch_schedule,
    compare_format,
    precision_of,
    run_backend,
    tolerance_for,
)
from kdeploy.export.parity_report import write_reports
from kdeploy.export.replay import LOGGED, LoggedAnswers, logged_inputs
from kdeploy.runtimes.base import Backend, load_backend
from kdeploy.wire.payload_log import is_payload_log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConfig:
    """What to compare and how strictly."""

    data: Path | None = None
    """Labelled inputs (.npz); default: the version's validation data, else inputs generated from the signature."""
    samples: int = 256
    """Rows to compare (at most)."""
    max_batch: int = 32
    """Largest batch sent to each runtime; batches of 1 and max/2 are sent too."""
    report_dir: Path | None = None
    """Where parity.json, parity.md and parity.png go; default: the version folder."""
    atol: dict[str, float] = field(default_factory=dict)
    """Per-format absolute tolerance overrides."""
    rtol: dict[str, float] = field(default_factory=dict)
    """Per-format relative tolerance overrides."""
    seed: int = 0
    """Seed of generated inputs."""


def load_inputs(
    version_dir: Path, manifest: Manifest, config: VerifyConfig
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """The feed to compare on, its labels if any, and a description of where it came from."""
    source, described = config.data, str(config.data)
    if source is None and manifest.validation_data and (version_dir / manifest.validation_data).exists():
        source, described = version_dir / manifest.validation_data, f"the version's {manifest.validation_data}"
    if source is not None:
        feed, labels = load_data_file(source, manifest.signature)
        rows = min(config.samples, batch_size(feed))
        return slice_feed(feed, 0, rows), (labels[:rows] if labels is not None else None), described
    rng = np.random.default_rng(config.seed)
    return manifest.signature.generate_feed(config.samples, rng), None, f"generated inputs (seed {config.seed})"


def verify_version(
    version_dir: Path,
    config: VerifyConfig = VerifyConfig(),
    progress: Callable[[str], None] = logger.info,
    candidates: Mapping[str, Backend] | None = None,
) -> ParityReport:
    """Run the source model and every format of a version on the same inputs and compare them.

    The reference is the source the version keeps, in its own runtime (`manifest.source.format`: Keras for a
    `.keras` or `.h5` source, TensorFlow for a SavedModel). An artifact that is the source's own files is not
    run again: it is listed as the reference itself.

    Writes parity.json, parity.md and parity.png to `config.report_dir` (default: the version folder). A version
    without manifest.json (kdeploy did not export it) is checked by `verify_bare.verify_bare_version` instead.

    Args:
        version_dir: the version folder (its manifest, source model and artifacts).
        config: data, batch sizes, tolerances, report folder.
        progress: sink for progress lines.
        candidates: backends to compare instead of the version's artifacts, by name (e.g. clients of a running
            server); they are compared at fp32 tolerance unless overridden, and closed afterwards.

    Returns:
        The report; falsy when a format is out of tolerance.

    Raises:
        UsageError: when the version or the data cannot be read.
    """
    started = time.perf_counter()
    version_dir = Path(version_dir)
    if config.samples < 1 or config.max_batch < 1:
        raise UsageError("--samples and --max-batch must be at least 1")
    if not (version_dir / MANIFEST_FILE).exists() and candidates is None:
        from kdeploy.export.verify_bare import verify_bare_version

        return verify_bare_version(version_dir, config, progress)
    manifest = read_manifest(version_dir)
    answers: LoggedAnswers | None = None
    if config.data is not None and is_payload_log(config.data):  # requests a server logged, and its answers
        feed, data_source, answers, note = logged_inputs(config.data, manifest)
        if note:
            progress(f"verify: {note}")
        feed, labels = slice_feed(feed, 0, min(config.samples, batch_size(feed))), None
    else:
        feed, labels, data_source = load_inputs(version_dir, manifest, config)
    schedule = batch_schedule(batch_size(feed), config.max_batch)
    changed = {p.split(":", 1)[0]: p.split(": ", 1)[1] for p in checksum_problems(version_dir, manifest)}
    if manifest.source is None:
        raise UsageError(f"{version_dir} has no source model to compare with (kdeploy did not export it)")
    reference_format = manifest.source.format
    if reference_format in changed:
        raise UsageError(f"the reference model ({reference_format}) {changed[reference_format]}")
    formats = []
    to_compare: dict[str, tuple[str, Backend | None]]
    if candidates is None:
        to_compare = {fmt: (precision_of(fmt, a.options), None) for fmt, a in manifest.artifacts.items()}
        # A format whose files are the reference's own (a SavedModel source's savedmodel) would be compared with
        # itself: the checksums above already prove it is the reference.
        for fmt in [f for f, a in manifest.artifacts.items() if _is_the_source(a, manifest.source)]:
            precision, _ = to_compare.pop(fmt)
            progress(f"verify: {fmt} is the reference itself (same files); not compared")
            formats.append(FormatComparison(fmt, precision, tolerance_for(fmt, precision, config.atol, config.rtol),
                                            note=SAME_AS_REFERENCE))
    else:
        to_compare = {name: ("fp32", backend) for name, backend in candidates.items()}
    if answers is not None:  # what the server answered in production, on these very inputs
        to_compare[LOGGED] = ("fp32", answers)
    reference: dict[str, np.ndarray] = {}
    if to_compare:
        progress(f"verify: reference {reference_format} on {batch_size(feed)} samples ({data_source})")
        reference = _run_reference(version_dir, manifest, reference_format, feed, schedule, data_source)
    for fmt, (precision, given) in to_compare.items():
        progress(f"verify: {fmt}")
        tolerance = tolerance_for(fmt, precision, config.atol, config.rtol)
        try:
            backend = given if given is not None else load_backend(fmt, version_dir, manifest.signature)
            outputs = _run(backend, feed, schedule)
        except Exception as exc:  # a runtime that cannot load or run the artifact is a parity failure
            logger.debug("backend %s failed", fmt, exc_info=True)
            formats.append(FormatComparison(fmt, precision, tolerance, problems=[f"could not run: {exc}"]))
            continue
        comparison = compare_format(fmt, precision, tolerance, manifest.signature, reference, outputs, labels)
        if fmt in changed:
            comparison.problems.append(changed[fmt])
        formats.append(comparison)
    report = ParityReport(
        model=manifest.name, version=manifest.version, reference=reference_format, samples=batch_size(feed),
        batch_sizes=schedule, data_source=data_source, formats=formats, seconds=time.perf_counter() - started,
    )
    write_reports(report, config.report_dir or version_dir)
    return report


def _is_the_source(artifact: Artifact, source: Artifact) -> bool:
    return artifact.format == source.format and artifact.path == source.path and artifact.sha256 == source.sha256


def _run_reference(version_dir: Path, manifest: Manifest, fmt: str, feed: dict[str, np.ndarray],
                   schedule: list[int], data_source: str) -> dict[str, np.ndarray]:
    """The source model's outputs, run in its own runtime (Keras for a .keras or .h5 source, TensorFlow for a
    SavedModel).

    Raises:
        UsageError: when the reference cannot run on the inputs (generated strings are no serialized tf.Example).
    """
    unsafe = bool(manifest.export_options.get("unsafe", False))
    try:
        backend = (load_backend(fmt, version_dir, manifest.signature, unsafe=unsafe) if fmt == "keras"
                   else load_backend(fmt, version_dir, manifest.signature))
        return _run(backend, feed, schedule)
    except UsageError:
        raise
    except Exception as exc:  # the reference itself fails: nothing can be compared
        logger.debug("reference %s failed", fmt, exc_info=True)
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        hint = "; pass --data FILE.npz with valid inputs" if data_source.startswith("generated") else ""
        raise UsageError(f"the reference model ({fmt}) cannot run on {data_source}: {reason}{hint}") from None


def _run(backend: Backend, feed: dict[str, np.ndarray], schedule: list[int]) -> dict[str, np.ndarray]:
    try:
        return run_backend(backend, feed, schedule)
    finally:
        backend.close()


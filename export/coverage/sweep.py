"""Run the zoo through kdeploy's real export and verify, one model at a time in worker processes.

Every case is exported three times with `export_model` (its parity gate on): SavedModel + ONNX + TFLite fp32,
then TFLite fp16, then TFLite dynamic-int8. Known-failure refusals are switched off so the converters themselves
are measured. A worker that exceeds the per-model time limit is killed and replaced; its case fails with
"timed out".
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CELLS: tuple[str, ...] = ("savedmodel", "onnx", "tflite", "tflite-fp16", "tflite-dynamic-int8")
"""Columns of the matrix: a format, and TFLite once per quantisation."""
FP32_CELLS: tuple[str, ...] = ("savedmodel", "onnx", "tflite")
REASON_CHARS = 240


@dataclass
class CaseResult:
    """One row of the matrix."""

    name: str
    group: str
    cells: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per column: {"status": "pass" | "fail", "reason": one line, "stage": build | convert | parity | timeout}."""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "seconds": round(self.seconds, 2), "cells": self.cells}


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 1] + "…"


def run_case(name: str, work: Path, samples: int = 32) -> CaseResult:
    """Build, save and export one case in this process; every cell gets pass or a one-line reason."""
    import keras
    import numpy as np

    from kdeploy.export.coverage.zoo import all_cases
    from kdeploy.export.exporter import ExportConfig, export_model
    from kdeploy.export.verify import VerifyConfig

    case = next(c for c in all_cases() if c.name == name)
    result = CaseResult(case.name, case.group)
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "model.keras"
    try:
        keras.utils.set_random_seed(0)
        model = case.build()
        model.save(model_path)
        if case.data is not None:
            np.savez(work / "validation.npz", **case.data(np.random.default_rng(0), samples))  # type: ignore[arg-type]
    except Exception as exc:  # a layer that cannot be built or saved fails every cell the same way
        reason = _one_line(f"build/save: {type(exc).__name__}: {exc}")
        result.cells = {cell: {"status": "fail", "stage": "build", "reason": reason} for cell in CELLS}
        return result
    verify = VerifyConfig(samples=samples, max_batch=8)
    runs: list[tuple[tuple[str, ...], str, dict[str, str]]] = [
        (("savedmodel", "onnx", "tflite"), "none", {"savedmodel": "savedmodel", "onnx": "onnx", "tflite": "tflite"}),
        (("tflite",), "fp16", {"tflite": "tflite-fp16"}),
        (("tflite",), "dynamic-int8", {"tflite": "tflite-dynamic-int8"}),
    ]
    for version, (formats, quantization, columns) in enumerate(runs, start=1):
        config = ExportConfig(model_path=model_path, repository=work / "repo", name="m", version=version,
                              formats=formats, tflite_quantization=quantization, allow_partial=True, force=True,
                              verify_config=verify, refuse_known_failures=False)
        try:
            exported = export_model(config, progress=lambda _: None)
        except Exception as exc:  # export itself failed (no format written, bad signature...)
            reason = _one_line(f"{type(exc).__name__}: {exc}")
            result.cells.update({col: {"status": "fail", "stage": "convert", "reason": reason}
                                 for col in columns.values()})
            continue
        comparisons = {f.format: f for f in exported.parity.formats} if exported.parity else {}
        for fmt, column in columns.items():
            if fmt in exported.failed_formats:
                result.cells[column] = {"status": "fail", "stage": "convert",
                                        "reason": _one_line(exported.failed_formats[fmt])}
            elif fmt in comparisons and not comparisons[fmt].passed:
                result.cells[column] = {"status": "fail", "stage": "parity",
                                        "reason": _one_line(comparisons[fmt].failures[0].split(": ", 1)[1])}
            else:
                result.cells[column] = {"status": "pass", "stage": "parity", "reason": ""}
    result.seconds = time.perf_counter() - started
    keras.backend.clear_session()
    return result


def _worker(connection: Connection, root: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.disable(logging.WARNING)
    from kdeploy.common.native_log import import_tensorflow_quietly

    import_tensorflow_quietly()
    while True:
        name = connection.recv()
        if name is None:
            return
        with tempfile.TemporaryDirectory(dir=root) as work:
            try:
                result = run_case(name, Path(work))
            except Exception as exc:  # a bug in the sweep itself: report it on the row, keep going
                result = CaseResult(name, "?", {cell: {"status": "fail", "stage": "build",
                                                       "reason": _one_line(f"sweep error: {exc!r}")}
                                                for cell in CELLS})
        connection.send(result)


@dataclass
class _Slot:
    process: Any
    connection: Connection
    case: str | None = None
    started: float = 0.0
    done: int = 0


def run_sweep(
    names: Sequence[str],
    groups: dict[str, str],
    jobs: int = 2,
    timeout: float = 240.0,
    recycle_after: int = 25,
    progress: Callable[[str], None] = print,
) -> list[CaseResult]:
    """Run cases in `jobs` worker processes, each case limited to `timeout` seconds.

    Workers are replaced after `recycle_after` cases, so memory that TensorFlow keeps per model stays bounded.
    """
    context = multiprocessing.get_context("spawn")
    pending = list(names)
    results: dict[str, CaseResult] = {}
    total = len(pending)
    started = time.perf_counter()
    root = tempfile.mkdtemp(prefix="kdeploy-coverage-")

    def start() -> _Slot:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, root), daemon=True)
        process.start()
        return _Slot(process, parent)

    def stop(slot: _Slot, kill: bool = False) -> None:
        if kill:
            slot.process.kill()
        else:
            slot.connection.send(None)
        slot.process.join(30)

    slots = [start() for _ in range(max(1, min(jobs, total)))]
    try:
        while pending or any(s.case for s in slots):
            for index in range(len(slots)):
                slot = slots[index]
                if slot.case is None and pending:
                    if slot.done >= recycle_after:
                        stop(slot)
                        slot = slots[index] = start()
                    slot.case, slot.started = pending.pop(0), time.monotonic()
                    slot.connection.send(slot.case)
                if slot.case is None:
                    continue
                result: CaseResult | None = None
                if slot.connection.poll(0.05):
                    try:
                        result = slot.connection.recv()
                    except EOFError:
                        result = _failed(slot.case or "", groups, "the worker process died (crash in a converter)")
                        slot = slots[index] = _replace(slot, start, stop)
                elif not slot.process.is_alive():
                    result = _failed(slot.case or "", groups, f"the worker process died (exit {slot.process.exitcode})")
                    slot = slots[index] = _replace(slot, start, stop)
                elif time.monotonic() - slot.started > timeout:
                    result = _failed(slot.case or "", groups, f"timed out after {timeout:.0f} s", stage="timeout")
                    result.seconds = timeout
                    slot = slots[index] = _replace(slot, start, stop)
                if result is not None:
                    results[result.name] = result
                    slot.case = None
                    slot.done += 1
                    progress(_progress_line(len(results), total, result, time.perf_counter() - started))
    finally:
        for slot in slots:
            stop(slot, kill=slot.case is not None)
    return [results[name] for name in names if name in results]


def _replace(slot: _Slot, start: Callable[[], _Slot], stop: Callable[[_Slot, bool], None]) -> _Slot:
    stop(slot, True)
    return start()


def _failed(name: str, groups: dict[str, str], reason: str, stage: str = "convert") -> CaseResult:
    return CaseResult(name, groups.get(name, "?"),
                      {cell: {"status": "fail", "stage": stage, "reason": reason} for cell in CELLS})


def _progress_line(done: int, total: int, result: CaseResult, elapsed: float) -> str:
    marks = " ".join(f"{cell}={'ok' if result.cells.get(cell, {}).get('status') == 'pass' else 'FAIL'}"
                     for cell in CELLS)
    return f"[{done:3d}/{total}] {elapsed:6.0f}s  {result.name:<44} {result.seconds:5.1f}s  {marks}"

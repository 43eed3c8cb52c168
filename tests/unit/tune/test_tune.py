"""`kdeploy tune`'s parts: the candidates, the score under an SLO, the config each server gets, the report."""

from __future__ import annotations

import json

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.loadtest.slo import parse_slo
from kdeploy.serve.config import BatchingParameters
from kdeploy.serve.model_settings import RuntimeSettings, read_settings_file
from kdeploy.serve.sources import sources_from_model_config
from kdeploy.tune.candidates import candidate_grid
from kdeploy.tune.measure import LevelResult, level_from_csv_row
from kdeploy.tune.report import batching_files, markdown, plot
from kdeploy.tune.runner import Measured, TuneConfig, score, settings_document


def level(concurrency: int, rate: float, p99: float, errors: float = 0.0) -> LevelResult:
    return LevelResult(concurrency, rate, p99 / 2, p99, int(rate * 3), errors, {"p50": p99 / 2, "p99": p99})


def test_the_grid_starts_with_the_defaults_and_sets_every_key():
    grid = candidate_grid(2)
    assert grid[0].label == "defaults" and grid[0].settings.apply(RuntimeSettings()) == RuntimeSettings()
    assert len({c.label for c in grid}) == len(grid)
    for candidate in grid:
        s = candidate.settings
        assert None not in (s.intra_op_threads, s.spin_wait, s.execution, s.batching_enabled)
    assert not any(c.settings.batching_enabled for c in candidate_grid(2, batching=False))
    assert all(c.workers == 1 for c in candidate_grid(1))


def test_each_candidate_server_config_reads_back_as_its_settings(tmp_path):
    (tmp_path / "m").mkdir()
    for candidate in candidate_grid(4):
        path = tmp_path / f"{candidate.label}.toml"
        path.write_text(settings_document(candidate, "m", tmp_path / "m"))
        [source] = sources_from_model_config(path)
        assert source.name == "m" and source.base_path == (tmp_path / "m").resolve()
        assert source.settings.apply(RuntimeSettings(batching=BatchingParameters())) == \
            candidate.settings.apply(RuntimeSettings(batching=BatchingParameters()))


def test_throughput_counts_only_levels_that_hold_the_slo_without_errors():
    levels = [level(1, 100, 5), level(8, 400, 15), level(32, 600, 40), level(64, 900, 10, errors=0.01)]
    assert score(levels, "throughput", parse_slo("p99<20ms")) == 400
    assert score(levels, "throughput", None) == 600
    assert score(levels, "throughput", parse_slo("p99<1ms")) is None
    assert score(levels, "latency", None) == -2.5


def test_a_candidate_keeps_the_median_round_per_level():
    grid = candidate_grid(2)
    measured = Measured(grid[0], rounds=[[level(1, 100, 5)], [level(1, 300, 5)], [level(1, 200, 5)]])
    assert [r.infer_per_s for r in measured.levels()] == [200]


def test_bad_tune_settings_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not a model folder"):
        TuneConfig(model_dir=tmp_path / "missing", out_dir=tmp_path).check()
    (tmp_path / "m").mkdir()
    with pytest.raises(UsageError, match="include 1"):
        TuneConfig(model_dir=tmp_path / "m", out_dir=tmp_path, objective="latency", concurrency=(8,)).check()
    with pytest.raises(UsageError, match="SLO term"):
        TuneConfig(model_dir=tmp_path / "m", out_dir=tmp_path, slo="p99 under 20").check()


def test_the_report_shows_every_candidate_and_marks_slo_misses(tmp_path):
    document = {
        "model": "wide", "objective": "throughput", "slo": "p99<20ms", "load_generator": "perf_analyzer",
        "concurrency": [1, 32], "level_seconds": 3, "seconds": 40, "budget_s": 60, "machine": "test", "date": "d",
        "best": "spin-inline", "gain_over_defaults": 1.4, "skipped": ["batch8"],
        "candidates": [
            {"label": "defaults", "describe": "spin=auto", "rounds": 1, "score": 500.0,
             "levels": [{"concurrency": 1, "infer_per_s": 500, "p99_ms": 3.0, "error": None, "held": True},
                        {"concurrency": 32, "infer_per_s": 800, "p99_ms": 45.0, "error": None, "held": False}]},
            {"label": "spin-inline", "describe": "spin=on", "rounds": 2, "score": 700.0,
             "levels": [{"concurrency": 1, "infer_per_s": 700, "p99_ms": 2.0, "error": None, "held": True},
                        {"concurrency": 32, "infer_per_s": 900, "p99_ms": 30.0, "error": None, "held": False}]},
        ],
    }
    text = markdown(document)
    assert "| defaults | spin=auto | 1 | 500 (3.0) | 800 (45.0) ✗ | 500 |" in text
    assert "| **spin-inline** |" in text and "1.40 x the defaults" in text and "batch8" in text
    png = plot(document, tmp_path / "tune.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(document)


def test_chosen_batching_is_written_for_tf_serving_and_triton(tmp_path):
    from tests.unit.serve.fakes import write_version

    write_version(tmp_path, "m", 1)
    batched = next(c for c in candidate_grid(2) if c.label == "batch8")
    written = batching_files(batched.settings, tmp_path / "m", tmp_path / "out")
    assert [p.name for p in written] == ["batching_parameters.txt", "config.pbtxt"]
    text = written[0].read_text()
    assert "max_batch_size {\n  value: 8\n}" in text and "batch_timeout_micros {\n  value: 500\n}" in text
    assert "max_queue_delay_microseconds: 500" in written[1].read_text()
    assert batching_files(candidate_grid(2)[0].settings, tmp_path / "m", tmp_path / "none") == []
    # And the kdeploy.toml tune writes for it reads back as the same settings.
    (tmp_path / "kdeploy.toml").write_text(batched.settings.to_toml())
    assert read_settings_file(tmp_path / "kdeploy.toml").apply(RuntimeSettings()) == \
        batched.settings.apply(RuntimeSettings())


def test_a_perf_analyzer_csv_row_becomes_a_level():
    import csv
    import io

    text = ("Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
            "8,317.353,4,1,22539,28691,37008,168678\n")
    result = level_from_csv_row(next(csv.DictReader(io.StringIO(text))), 8, 3.0)
    assert (result.concurrency, result.infer_per_s, result.p50_ms, result.p99_ms) == (8, 317.353, 22.539, 168.678)
    assert result.summary()["latency_ms"]["p95"] == 37.008 and result.requests == int(317.353 * 3)

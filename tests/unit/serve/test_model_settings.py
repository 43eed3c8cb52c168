"""Per-model runtime settings: kdeploy.toml and kdeploy server configs read, layered, checked and applied (through
onnxruntime's own session options and the batcher's statistics)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from kdeploy.common.errors import UsageError
from kdeploy.serve.auto_settings import choose, prefer_spinning
from kdeploy.serve.config import BatchingParameters, ModelSource, ServeConfig
from kdeploy.serve.model_settings import SETTINGS_FILE, RuntimeSettings, read_settings_file
from kdeploy.serve.models import ModelManager, VersionState
from kdeploy.serve.server import backend_loader, runtime_settings
from kdeploy.serve.service import InferenceService
from kdeploy.serve.sources import sources_from_model_config
from tests.bare_models import write_linear_onnx
from tests.unit.serve.fakes import FakeLoader, make_manager, write_version


def write_settings(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    path.write_text(text)
    return path


def test_a_settings_file_is_read_into_typed_values(tmp_path):
    path = write_settings(tmp_path, '[runtime]\nintra_op_threads = 2\nspin_wait = true\nexecution = "thread"\n'
                                    '[batching]\nmax_batch_size = 8\nallowed_batch_sizes = [2, 4, 8]\n')
    layer = read_settings_file(path)
    applied = layer.apply(RuntimeSettings())
    assert (applied.intra_op_threads, applied.spin_wait, applied.execution) == (2, "on", "thread")
    assert applied.batching == BatchingParameters(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    assert read_settings_file(write_settings(tmp_path, layer.to_toml())) == layer  # what tune writes reads back


@pytest.mark.parametrize("text, key", [
    ("[runtime]\nspinwait = true\n", "runtime.spinwait"),
    ("[runtime]\nintra_op_threads = -1\n", "runtime.intra_op_threads"),
    ("[runtime]\nintra_op_threads = \"two\"\n", "runtime.intra_op_threads"),
    ("[runtime]\nspin_wait = \"sometimes\"\n", "runtime.spin_wait"),
    ("[runtime]\nexecution = \"gpu\"\n", "runtime.execution"),
    ("[batching]\nenabled = 1\n", "batching.enabled"),
    ("[batching]\nmax_batch_size = 0\n", "max_batch_size"),
    ("[batching]\nallowed_batch_sizes = [4, 2]\n", "allowed_batch_sizes"),
    ("[batching]\ntimeout = 5\n", "batching.timeout"),
    ("[runtim]\n", "'runtim'"),
    ("[runtime\n", "not valid TOML"),
])
def test_a_bad_settings_file_is_one_line_naming_the_file_and_key(tmp_path, text, key):
    path = write_settings(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        read_settings_file(path)
    message = str(caught.value)
    assert str(path) in message and key in message and "\n" not in message


def test_layers_apply_in_order_server_then_folder_then_server_config(tmp_path):
    loader = FakeLoader()
    write_version(tmp_path, "m", 1)
    write_settings(tmp_path / "m", "[runtime]\nintra_op_threads = 3\nspin_wait = false\n"
                                   "[batching]\nmax_batch_size = 4\n")
    config = tmp_path / "models.toml"
    config.write_text('[[model]]\nname = "m"\nbase_path = "m"\n[model.runtime]\nspin_wait = "run"\n')
    [source] = sources_from_model_config(config)
    manager = ModelManager([source], "onnx", loader,
                           settings=RuntimeSettings(intra_op_threads=1, execution="thread"))
    settings = manager.settings_for(source)
    assert (settings.intra_op_threads, settings.spin_wait, settings.execution) == (3, "run", "thread")
    assert settings.batching is not None and settings.batching.max_batch_size == 4
    manager.load_all()
    assert loader.settings["m", 1].spin_wait == "run"
    [served] = manager.statuses("m")
    assert served.batcher is not None and not served.inline
    manager.close()


def test_a_batching_table_can_turn_the_servers_batching_off_for_one_model(tmp_path):
    write_version(tmp_path, "m", 1)
    write_settings(tmp_path / "m", "[batching]\nenabled = false\n")
    manager = make_manager(tmp_path, FakeLoader(), batching=BatchingParameters())
    manager.load_all()
    [served] = manager.statuses("m")
    assert served.batcher is None and served.settings.batching is None
    manager.close()


def test_a_bad_settings_file_fails_the_version_with_the_reason_and_the_server_goes_on(tmp_path):
    write_version(tmp_path, "m", 1)
    path = write_settings(tmp_path / "m", "[runtime]\nthreads = 2\n")
    manager = make_manager(tmp_path, FakeLoader())
    manager.load_all()
    [served] = manager.statuses("m")
    assert served.state is VersionState.END and str(path) in served.error and "runtime.threads" in served.error
    assert "m" in manager.problems()


def test_a_changed_settings_file_applies_to_the_next_version_loaded(tmp_path):
    loader = FakeLoader()
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    write_settings(tmp_path / "m", "[runtime]\nintra_op_threads = 2\n")
    manager.poll()
    assert loader.settings["m", 1].intra_op_threads == 0  # the version already serving keeps its settings
    write_version(tmp_path, "m", 2)
    manager.poll()
    assert loader.settings["m", 2].intra_op_threads == 2
    manager.close()


def test_settings_reach_onnxruntimes_session_options(tmp_path):
    for name in ("tuned", "plain"):
        (tmp_path / name / "1").mkdir(parents=True)
        write_linear_onnx(tmp_path / name / "1" / "model.onnx")
    write_settings(tmp_path / "tuned", "[runtime]\nintra_op_threads = 1\nspin_wait = \"run\"\n")
    config = ServeConfig(models=(ModelSource("tuned", tmp_path / "tuned"), ModelSource("plain", tmp_path / "plain")),
                         intra_op_threads=2, spin_wait="on")
    manager = ModelManager(list(config.models), "onnx", backend_loader(config), settings=runtime_settings(config))
    manager.load_all()
    try:
        tuned = manager.resolve("tuned").backend.session_options
        plain = manager.resolve("plain").backend.session_options
        assert tuned.intra_op_num_threads == 1 and plain.intra_op_num_threads == 2
        assert tuned.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert tuned.get_session_config_entry("session.force_spinning_stop") == "1"
        assert plain.get_session_config_entry("session.force_spinning_stop") == "0"
    finally:
        manager.close()


def test_auto_on_a_tiny_model_runs_inline_with_sleeping_threads(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    write_linear_onnx(tmp_path / "m" / "1" / "model.onnx")
    config = ServeConfig(models=(ModelSource("m", tmp_path / "m"),))
    manager = ModelManager(list(config.models), "onnx", backend_loader(config), settings=runtime_settings(config),
                           inline_max_seconds=0.05)
    manager.load_all()
    try:
        served = manager.resolve("m")
        assert served.inline and served.settings.spin_wait == "off" and served.settings.execution == "inline"
        assert served.backend.session_options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        manager.close()


@pytest.mark.parametrize("spinning_faster", [True, False])
def test_auto_on_a_heavy_model_times_it_both_ways_and_keeps_the_faster(tmp_path, monkeypatch, spinning_faster):
    timings = []

    def prefer(asleep, spinning):
        timings.append((asleep, spinning))
        return spinning_faster

    monkeypatch.setattr("kdeploy.serve.models.prefer_spinning", prefer)
    (tmp_path / "m" / "1").mkdir(parents=True)
    write_linear_onnx(tmp_path / "m" / "1" / "model.onnx")
    config = ServeConfig(models=(ModelSource("m", tmp_path / "m"),))
    manager = ModelManager(list(config.models), "onnx", backend_loader(config), settings=runtime_settings(config),
                           inline_max_seconds=0.0)  # every model counts as heavy
    manager.load_all()
    try:
        served = manager.resolve("m")
        options = served.backend.session_options
        assert len(timings) == 1 and all(0 < t < 1 for t in timings[0])
        assert served.inline  # default threads: one run uses every core
        assert served.settings.spin_wait == ("run" if spinning_faster else "off")
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning_faster
                                                                                        else "0")
        assert options.get_session_config_entry("session.force_spinning_stop") == ("1" if spinning_faster else "0")
    finally:
        manager.close()


def test_spinning_is_kept_only_when_clearly_faster():
    assert prefer_spinning(1.0e-3, 0.85e-3) and not prefer_spinning(1.0e-3, 0.95e-3)
    assert not prefer_spinning(1.0e-3, 1.2e-3)


@pytest.mark.parametrize("threads, row_us, batching, expected", [
    (0, 50, False, ("off", True)),      # tiny: inline, asleep
    (0, 900, False, ("run", True)),     # heavy, all cores per run: inline, spinning during runs
    (1, 900, False, ("run", False)),    # heavy, one core per run: threads, so runs fill the cores
    (0, 900, True, ("off", True)),      # batched: the batch threads' pool sleeps
])
def test_the_auto_rule(threads, row_us, batching, expected):
    settings = RuntimeSettings(intra_op_threads=threads, batching=BatchingParameters() if batching else None)
    choice = choose(settings, row_us / 1e6, inline_max_seconds=200e-6, cores=2)
    assert (choice.spin_wait, choice.inline) == expected
    fixed = choose(RuntimeSettings(spin_wait="on", execution="thread"), 50e-6, inline_max_seconds=200e-6, cores=2)
    assert (fixed.spin_wait, fixed.inline) == ("on", False)  # set values are kept


def test_a_models_own_batching_is_used_and_seen_in_its_statistics(tmp_path):
    loader = FakeLoader()
    write_version(tmp_path, "m", 1)
    write_settings(tmp_path / "m", "[batching]\nmax_batch_size = 4\nbatch_timeout_micros = 100000\n"
                                   "num_batch_threads = 1\n")
    manager = make_manager(tmp_path, loader)  # the server itself does not batch
    manager.load_all()
    service = InferenceService(manager)
    backend = loader.backend(1)
    backend.gate = threading.Event()
    backend.entered.clear()
    results: list[np.ndarray] = []

    def call(value: float) -> None:
        with service.serving("m") as served:
            results.append(service.infer(served, {"x": np.full((1, 3), value, np.float32)}).outputs["y"])

    first = threading.Thread(target=call, args=(0.0,))
    first.start()
    assert backend.entered.wait(5)  # the first request runs alone and holds the runtime
    others = [threading.Thread(target=call, args=(float(i),)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    served = manager.resolve("m")
    deadline = threading.Event()
    while served.batcher.queued_rows < 6 and not deadline.wait(0.01):
        pass
    backend.gate.set()
    for thread in (first, *others):
        thread.join(10)
    sizes = service.statistics("m", 1).batch_sizes
    assert len(results) == 7 and max(sizes) == 4 and sum(rows * d.count for rows, d in sizes.items()) == 7
    manager.close()


def test_a_kdeploy_server_config_lists_models_with_their_settings(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[model]]\nname = "a"\nbase_path = "repo/a"\nversion_policy = "latest:2"\n'
                    'version_labels = { stable = 1 }\n[model.runtime]\nexecution = "inline"\n'
                    '[[model]]\nname = "b"\nbase_path = "/abs/b"\n')
    a, b = sources_from_model_config(path)
    assert (a.name, a.base_path, a.policy.describe(), a.labels) == ("a", tmp_path / "repo/a", "latest:2", {"stable": 1})
    assert a.settings.execution == "inline" and b.base_path == Path("/abs/b") and b.settings.execution is None


@pytest.mark.parametrize("text, needle", [
    ('[[model]]\nname = "a"\n', "base_path"),
    ('[[model]]\nname = "a"\nbase_path = "a"\npolicy = "all"\n', "'policy'"),
    ('[[model]]\nname = "a"\nbase_path = "a"\n[model.runtime]\nspin = 1\n', "runtime.spin"),
    ('[[model]]\nname = "a"\nbase_path = "a"\nversion_policy = "newest"\n', "version_policy"),
    ("", "lists no model"),
])
def test_a_bad_server_config_is_one_line_naming_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        sources_from_model_config(path)
    assert str(path) in str(caught.value) and needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, ("auto", "auto")),
    (["--spin-wait"], {}, ("on", "auto")),                       # the bare switch it used to be
    (["--spin-wait", "run", "--execution", "thread"], {}, ("run", "thread")),
    ([], {"KDEPLOY_SPIN_WAIT": "1", "KDEPLOY_EXECUTION": "inline"}, ("on", "inline")),
    ([], {"KDEPLOY_SPIN_WAIT": "false"}, ("off", "auto")),
])
def test_spin_wait_and_execution_flags(tmp_path, monkeypatch, argv, env, expected):
    import argparse

    from kdeploy.serve.cli import add_serve_parser, config_from_args

    (tmp_path / "m").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["serve", "--repository", str(tmp_path), *argv]))
    config.check()
    assert (config.spin_wait, config.execution) == expected

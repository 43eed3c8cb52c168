"""The model manager over a temporary repository, with fake backends: policies, states, roll-outs, drain."""

from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import pytest

from kdeploy.serve.batching import BatchingParameters
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.models import WARM_UP_TIMED_RUNS, VersionState
from kdeploy.wire.errors import ErrorKind, ServeError
from tests.unit.serve.fakes import SIGNATURE, FakeLoader, make_manager, wait_until, write_version

LOADING, AVAILABLE, UNLOADING, END = (VersionState.LOADING, VersionState.AVAILABLE, VersionState.UNLOADING,
                                      VersionState.END)


def states(manager, name: str = "m") -> dict[int, VersionState]:
    return {s.version: s.state for s in manager.statuses(name)}


def state_gauge(metrics: ServerMetrics, version: int, model: str = "m") -> float | None:
    return metrics.registry.get_sample_value("kdeploy_model_version_state", {"model": model, "version": str(version)})


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.mark.parametrize("policy, served", [
    ("latest:1", [3]), ("latest:2", [2, 3]), ("all", [1, 2, 3]), ("specific:1,3", [1, 3]),
])
def test_the_version_policy_chooses_the_versions_loaded(tmp_path, loader, policy, served):
    for version in (1, 2, 3):
        write_version(tmp_path, "m", version)
    (tmp_path / "m" / ".staging-4-abc").mkdir()  # hidden: never a version
    manager = make_manager(tmp_path, loader, policy=policy)
    manager.load_all()
    assert states(manager) == dict.fromkeys(served, AVAILABLE)
    assert sorted(loader.loaded) == served
    assert manager.resolve("m").version == served[-1] and manager.is_ready("m") and manager.is_ready()


def test_a_version_is_loading_while_it_loads_then_available_after_its_warm_up(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    metrics = ServerMetrics()
    manager = make_manager(tmp_path, loader, metrics=metrics)
    seen = []
    loader.during_load = lambda v: seen.append((states(manager)[v], state_gauge(metrics, v), manager.is_ready()))
    manager.load_all()
    assert seen == [(LOADING, 20, False)]
    assert states(manager) == {1: AVAILABLE} and state_gauge(metrics, 1) == 30 and manager.is_ready()
    served = manager.resolve("m")
    assert served.manifest.signature == SIGNATURE and served.error is None and served.batcher is None
    # Warmed up on a generated row before it became AVAILABLE: once, then timed runs for the inline decision.
    assert loader.backend(1).rows == [1] * (1 + WARM_UP_TIMED_RUNS)
    assert 0 < served.row_seconds < 1


def test_a_version_that_fails_to_load_ends_with_its_error_and_the_others_still_serve(tmp_path, loader):
    for version in (1, 2):
        write_version(tmp_path, "m", version)
    loader.failures[2] = "cannot allocate the session"
    metrics = ServerMetrics()
    manager = make_manager(tmp_path, loader, policy="all", metrics=metrics)
    manager.load_all()
    [failed] = manager.statuses("m", 2)
    assert failed.state is END and failed.error == "cannot allocate the session" and failed.backend is None
    assert state_gauge(metrics, 2) == 50 and states(manager)[1] is AVAILABLE
    assert manager.resolve("m").version == 1 and manager.is_ready()
    with pytest.raises(ServeError) as error:
        manager.resolve("m", version=2)
    assert error.value.kind is ErrorKind.UNAVAILABLE
    assert "version 2 is END: cannot allocate the session" in error.value.message


@pytest.mark.parametrize("damage, words", [
    ("no onnx", "version has no onnx artifact (tf2onnx: unsupported op Foo)"),
    ("missing file", "onnx: model.onnx is missing"),
    ("bad manifest", "is not a valid manifest"),
])
def test_a_version_that_cannot_be_read_is_not_served(tmp_path, loader, damage, words):
    if damage == "no onnx":
        folder = write_version(tmp_path, "m", 1, model_bytes=None,
                               failed_formats={"onnx": "tf2onnx: unsupported op Foo"})
    else:
        folder = write_version(tmp_path, "m", 1)
    if damage == "missing file":
        (folder / "model.onnx").unlink()
    if damage == "bad manifest":
        (folder / "manifest.json").write_text('{"schema_version": 1}')
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    [status] = manager.statuses("m")
    assert status.state is END and words in status.error and loader.loaded == [] and not manager.is_ready()
    with pytest.raises(ServeError) as error:
        manager.resolve("m")
    assert error.value.kind is ErrorKind.UNAVAILABLE and "version 1 is END" in error.value.message


def test_a_failed_version_is_retried_only_when_its_folder_changes(tmp_path, loader):
    folder = write_version(tmp_path, "m", 1)
    loader.failures[1] = "boom"
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    assert manager.poll() is False and manager.poll() is False
    assert loader.loaded == [1]
    del loader.failures[1]
    (folder / "NOTES").write_text("republished")
    assert manager.poll() is True
    assert loader.loaded == [1, 1] and states(manager) == {1: AVAILABLE}


def test_a_corrupt_new_version_never_replaces_the_working_one(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    folder = write_version(tmp_path, "m", 2, model_bytes=b"version two")
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"garbage")
    assert manager.poll() is True
    [bad] = manager.statuses("m", 2)
    assert bad.state is END and "onnx: model.onnx does not match the sha256 in manifest.json" in bad.error
    assert loader.loaded == [1]  # checked before any runtime sees the file
    assert states(manager)[1] is AVAILABLE and manager.resolve("m").version == 1
    assert not loader.backend(1).closed.is_set()
    assert manager.poll() is False  # unchanged: not retried
    (folder / "model.onnx").write_bytes(b"version two")  # republished intact
    assert manager.poll() is True
    assert states(manager) == {1: END, 2: AVAILABLE} and loader.closed == [1]


def test_roll_out_and_roll_back_make_the_new_version_available_before_the_old_one_unloads(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    during_load, at_close = [], []
    loader.during_load = lambda v: during_load.append(states(manager))
    loader.on_close = lambda v: at_close.append(states(manager))
    write_version(tmp_path, "m", 2)
    assert manager.poll() is True
    assert during_load == [{1: AVAILABLE, 2: LOADING}] and at_close == [{1: UNLOADING, 2: AVAILABLE}]
    assert states(manager) == {1: END, 2: AVAILABLE} and manager.resolve("m").backend.version == 2
    during_load.clear()
    at_close.clear()
    shutil.rmtree(tmp_path / "m" / "2")  # roll back: version 1 is reloaded first
    assert manager.poll() is True
    assert during_load == [{1: LOADING, 2: AVAILABLE}] and at_close == [{1: AVAILABLE, 2: UNLOADING}]
    assert states(manager) == {1: AVAILABLE, 2: END} and manager.resolve("m").backend.version == 1
    assert loader.loaded == [1, 2, 1] and manager.poll() is False


def test_a_folder_without_a_manifest_is_not_loaded_and_the_working_version_keeps_serving(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    (tmp_path / "m" / "2").mkdir()  # being copied by hand
    assert manager.poll() is False and states(manager) == {1: AVAILABLE}
    shutil.rmtree(tmp_path / "m" / "2")
    write_version(tmp_path, "m", 2)
    assert manager.poll() is True and states(manager) == {1: END, 2: AVAILABLE}


def test_an_incomplete_newest_folder_does_not_stop_the_complete_one_loading_at_start(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    (tmp_path / "m" / "2").mkdir()  # a copy still in progress, no manifest yet
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    assert states(manager) == {1: AVAILABLE} and manager.is_ready("m")


def test_version_labels(tmp_path, loader):
    for version in (1, 2):
        write_version(tmp_path, "m", version)
    manager = make_manager(tmp_path, loader, policy="all", labels={"stable": 1, "canary": 2, "old": 7})
    manager.load_all()
    assert manager.resolve("m", label="stable").version == 1 and manager.resolve("m", label="canary").version == 2
    assert manager.acquire("m", label="stable").version == 1
    # An unknown label is INVALID_ARGUMENT in TF Serving (server_core.cc); a label's missing version NOT_FOUND.
    for label, kind, words in (
            ("beta", ErrorKind.INVALID_INPUT,
             "Unrecognized servable version label: beta (model 'm' has labels ['canary', 'old', 'stable'])"),
            ("old", ErrorKind.NOT_FOUND, "model 'm' has no version 7 (versions: [1, 2])")):
        with pytest.raises(ServeError) as error:
            manager.resolve("m", label=label)
        assert error.value.kind is kind and words in error.value.message


@pytest.mark.parametrize("request_, kind, words", [
    ({"name": "nope"}, ErrorKind.NOT_FOUND, "model 'nope' is not served here (models: m, empty)"),
    ({"name": "m", "version": 9}, ErrorKind.NOT_FOUND, "model 'm' has no version 9 (versions: [1])"),
    ({"name": "m", "label": "beta"}, ErrorKind.INVALID_INPUT,
     "Unrecognized servable version label: beta (model 'm' has labels none)"),
    ({"name": "empty"}, ErrorKind.UNAVAILABLE, "model 'empty' has no available version (no version folder"),
])
def test_resolve_and_acquire_errors(tmp_path, loader, request_, kind, words):
    write_version(tmp_path, "m", 1)
    (tmp_path / "empty").mkdir()
    manager = make_manager(tmp_path, loader, "m", "empty")
    manager.load_all()
    for call in (manager.resolve, manager.acquire):
        with pytest.raises(ServeError) as error:
            call(**request_)
        assert error.value.kind is kind and words in error.value.message
    assert manager.is_ready("m") and not manager.is_ready("empty") and not manager.is_ready()
    assert not manager.is_ready("nope")
    with pytest.raises(ServeError, match="has no version 9"):
        manager.statuses("m", 9)


def test_acquire_counts_a_request_in_until_it_is_released(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    first, second = manager.acquire("m"), manager.acquire("m", version=1)
    assert first is second and first.inflight == 2
    first.release()
    second.release()
    assert first.inflight == 0


def test_unloading_lets_requests_in_flight_finish(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader, drain_seconds=30)
    manager.load_all()
    held = manager.acquire("m")
    write_version(tmp_path, "m", 2)
    rollout = threading.Thread(target=manager.poll)
    rollout.start()
    try:
        assert wait_until(lambda: held.state is UNLOADING)
        # New requests go to version 2; version 1 takes none but still finishes the one it holds.
        assert manager.resolve("m").version == 2 and not held.acquire()
        assert not loader.backend(1).closed.is_set() and rollout.is_alive()
        x = np.ones((1, 3), np.float32)
        np.testing.assert_array_equal(held.backend.infer({"x": x})["y"], 2 * x + 1)
    finally:
        held.release()
        rollout.join(5)
    assert not rollout.is_alive() and loader.backend(1).closed.is_set()
    assert states(manager) == {1: END, 2: AVAILABLE}


def test_a_drain_longer_than_the_drain_time_is_cut_short(tmp_path, loader, caplog):
    write_version(tmp_path, "m", 1)
    manager = make_manager(tmp_path, loader, drain_seconds=0.05)
    manager.load_all()
    held = manager.acquire("m")
    write_version(tmp_path, "m", 2)
    with caplog.at_level(logging.WARNING, logger="kdeploy.serve.models"):
        assert manager.poll() is True  # returns although the request was never released
    assert states(manager) == {1: END, 2: AVAILABLE} and loader.backend(1).closed.is_set()
    assert "model m version 1 unloaded with 1 requests still in flight" in caplog.text
    held.release()


def test_close_unloads_every_version(tmp_path, loader):
    for version in (1, 2, 3):
        write_version(tmp_path, "m", version)
    loader.failures[3] = "boom"
    manager = make_manager(tmp_path, loader, policy="all")
    manager.load_all()
    manager.close()
    assert states(manager) == {1: END, 2: END, 3: END} and sorted(loader.closed) == [1, 2]
    assert not manager.is_ready()


def test_warm_up_runs_each_batch_size_on_the_validation_rows(tmp_path, loader):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_version(tmp_path, "m", 1, validation={"x": rows, "y": np.zeros(4)})
    manager = make_manager(tmp_path, loader, batching=BatchingParameters(max_batch_size=4, allowed_batch_sizes=(2, 4)))
    manager.load_all()
    try:
        assert manager.resolve("m").batcher is not None
        calls = loader.backend(1).calls
        # Each size the runtime will see (one row too, for the timed runs), on the held-out rows.
        expected = [rows[:1].tolist()] * (1 + WARM_UP_TIMED_RUNS) + [rows[:2].tolist(), rows.tolist()]
        assert [c["x"].tolist() for c in calls] == expected
    finally:
        manager.close()


def test_a_model_folders_batching_parameters_override_the_servers(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    (tmp_path / "m" / "batching_parameters.txt").write_text(
        "max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 8\n")
    manager = make_manager(tmp_path, loader, batching=BatchingParameters(max_batch_size=4))
    manager.load_all()
    manager.close()
    # Generated rows (no validation data), the folder's sizes (and one row, timed).
    assert loader.backend(1).rows == [1] * (1 + WARM_UP_TIMED_RUNS) + [2, 8]


def test_a_model_with_nothing_to_load_is_reported_end_with_the_reason_once(tmp_path, loader, caplog):
    write_version(tmp_path, "m", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign" / "3").mkdir(parents=True)  # a version folder, but no manifest.json in it
    manager = make_manager(tmp_path, loader, "m", "empty", "foreign", "missing")
    with caplog.at_level(logging.ERROR):
        manager.load_all()
        manager.poll()  # a second poll does not repeat the error
    problems = manager.problems()
    assert set(problems) == {"empty", "foreign", "missing"}
    assert problems["empty"].startswith("no version folder (a positive integer) in ")
    assert "(versions [3]) has a manifest.json or an artifact for --backend onnx (model.onnx)" in problems["foreign"]
    assert problems["missing"].endswith("missing is not a folder")
    [status] = manager.statuses("empty")
    assert status.state is END and status.error == problems["empty"]
    assert manager.statuses("m")[0].state is AVAILABLE and manager.is_ready("m")
    logged = [r.getMessage() for r in caplog.records if "cannot be served" in r.getMessage()]
    assert len(logged) == 3 and all(any(name in m for m in logged) for name in ("empty", "foreign", "missing"))


def test_a_model_whose_every_version_failed_is_a_problem_until_one_loads(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    loader.failures[1] = "broken weights"
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    assert manager.problems()["m"] == "version 1: broken weights"
    write_version(tmp_path, "m", 2)
    manager.poll()
    assert manager.problems() == {}


def test_a_version_whose_warm_up_fails_ends_with_the_reason_and_its_runtime_closed(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    original = loader.__call__

    def failing_backend(path, manifest, settings=None):
        backend = original(path, manifest, settings)
        backend.failing = True
        return backend

    manager = make_manager(tmp_path, failing_backend)
    manager.load_all()
    [status] = manager.statuses("m")
    assert status.state is END and "segfault in libfake.so" in status.error
    assert loader.backend(1).closed.is_set()


def test_a_version_folder_named_with_leading_zeros_is_that_version_loaded_from_its_own_folder(tmp_path, loader):
    write_version(tmp_path, "m", 1)
    (tmp_path / "m" / "1").rename(tmp_path / "m" / "00000123")  # TF Serving's test models name versions so
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    served = manager.resolve("m")
    assert states(manager) == {123: AVAILABLE} and served.version == 123
    assert served.path == tmp_path / "m" / "00000123"


def test_reconfigure_loads_new_models_unloads_those_left_out_and_follows_a_moved_base_path(tmp_path, loader):
    from kdeploy.serve.config import ModelSource, VersionPolicy

    for name, version in (("a", 1), ("b", 2), ("moved", 3)):
        write_version(tmp_path, name, version)
    write_version(tmp_path / "elsewhere", "moved", 5)
    manager = make_manager(tmp_path, loader, "a")
    manager.load_all()
    first = manager.resolve("a")
    manager.reconfigure([ModelSource("b", tmp_path / "b"), ModelSource("moved", tmp_path / "moved")])
    assert manager.model_names == ["b", "moved"] and "a" not in manager and "b" in manager
    assert first.state is END and loader.backend(1, "a").closed.is_set()  # left out: unloaded
    assert manager.resolve("b").version == 2 and manager.resolve("moved").version == 3
    with pytest.raises(ServeError) as error:
        manager.resolve("a")
    assert error.value.kind is ErrorKind.NOT_FOUND
    manager.reconfigure([ModelSource("b", tmp_path / "b", VersionPolicy("specific", versions=(2,)), {"stable": 2}),
                         ModelSource("moved", tmp_path / "elsewhere" / "moved")])
    assert manager.resolve("moved").version == 5 and loader.backend(3, "moved").closed.is_set()
    assert manager.resolve("b", label="stable").version == 2 and loader.loaded.count(2) == 1  # b kept, not reloaded

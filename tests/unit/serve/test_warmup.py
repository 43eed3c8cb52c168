"""TF Serving's warm-up records replayed at load (fake backends, records written with the server's own protos):
every record runs before the version is AVAILABLE, and a record that cannot run fails the load with its number."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.serve.models import VersionState
from kdeploy.serve.warmup import MAX_RECORDS, WARMUP_FILE, WarmupError, replay_warmup
from kdeploy.wire.protos.messages import load_protos
from kdeploy.wire.tensors import fill_tensor_proto
from kdeploy.wire.tfrecord import TFRecordError, crc32c, encode_records, read_records, write_records
from tests.unit.serve.fakes import SIGNATURE, EchoBackend, FakeLoader, make_manager, write_version


def predict_log(x: np.ndarray, signature_name: str = "", **inputs: np.ndarray) -> bytes:
    protos = load_protos()
    log = protos.cls("tensorflow.serving.PredictionLog")()
    request = log.predict_log.request
    request.model_spec.name = "anything"  # TF Serving ignores the model name of a warm-up record
    request.model_spec.signature_name = signature_name
    for name, value in {"x": x, **inputs}.items():
        fill_tensor_proto(request.inputs[name], value)
    return log.SerializeToString()


def test_tfrecord_framing_round_trips_and_checks_its_crcs(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path = write_records(tmp_path / "sub" / "records", [b"one", b"", b"three" * 100])
    assert list(read_records(path)) == [b"one", b"", b"three" * 100]
    data = bytearray(path.read_bytes())
    data[14] ^= 1  # a byte of the first record's data
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match="record 0 is corrupt"):
        list(read_records(path))
    path.write_bytes(encode_records([b"one"])[:-2])
    with pytest.raises(TFRecordError, match="record 0 is truncated"):
        list(read_records(path))
    path.write_bytes(encode_records([b"r"] * 3))
    with pytest.raises(TFRecordError, match="more than 2 records"):
        list(read_records(path, max_records=2))


def test_a_version_replays_its_warm_up_records_before_it_is_available(tmp_path):
    folder = write_version(tmp_path, "m", 1)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_records(folder / WARMUP_FILE, [predict_log(rows), predict_log(rows[:1], "serving_default")])
    loader = FakeLoader()
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    assert manager.statuses("m")[0].state is VersionState.AVAILABLE
    calls = loader.backend(1).calls
    np.testing.assert_array_equal(calls[0]["x"], rows)  # the records first, in order, then kdeploy's own warm-up
    np.testing.assert_array_equal(calls[1]["x"], rows[:1])


@pytest.mark.parametrize("records, words", [
    ([b"\xff\xff not a PredictionLog"], "Failed to parse warmup record 0"),
    (["ok", "wrong-dtype"], "warm-up record 1 of"),
    (["unknown-input"], "unknown input 'z'"),
    (["session-run"], "Unsupported log_type for warmup: session_run_log"),
    (["ok"] * (MAX_RECORDS + 1), f"more than {MAX_RECORDS} records"),
], ids=["garbage", "wrong-dtype", "unknown-input", "session-run", "too-many"])
def test_a_record_that_cannot_run_fails_the_load_with_its_number(tmp_path, records, words):
    protos = load_protos()
    session_run = protos.cls("tensorflow.serving.PredictionLog")()
    session_run.session_run_log.SetInParent()
    made = {"ok": predict_log(np.zeros((1, 3), np.float32)),
            "wrong-dtype": predict_log(np.zeros((1, 3), np.int64)),
            "unknown-input": predict_log(np.zeros((1, 3), np.float32), z=np.zeros((1, 3), np.float32)),
            "session-run": session_run.SerializeToString()}
    folder = write_version(tmp_path, "m", 1)
    write_records(folder / WARMUP_FILE, [made.get(r, r) if isinstance(r, str) else r for r in records])
    loader = FakeLoader()
    manager = make_manager(tmp_path, loader)
    manager.load_all()
    served = manager.statuses("m")[0]
    assert served.state is VersionState.END and words in served.error, served.error
    assert loader.backend(1).closed.is_set()
    with pytest.raises(WarmupError):
        replay_warmup(folder / WARMUP_FILE, EchoBackend(SIGNATURE, 1), served.manifest or _manifest(folder),
                      check_shapes=True)


def _manifest(folder):
    from kdeploy.contract.manifest import read_manifest

    return read_manifest(folder)

"""Payload log records replay exactly, files rotate without cutting a record, and a full queue drops and counts."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from kdeploy.common.errors import UsageError
from kdeploy.contract.signature import ModelSignature
from kdeploy.serve.metrics import ServerMetrics
from kdeploy.serve.observe import RequestScope
from kdeploy.serve.payload_log import CloudEventsPoster, PayloadLog, RotatingFile
from kdeploy.serve.record_queue import RecordQueue
from kdeploy.wire.payload_log import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventContext,
    binary_http,
    event_line,
    ndarray_from_tensor_json,
    read_payload_log,
    replay_rows,
    request_event,
    response_event,
    tensor_json,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    strings = np.array([[b"caf\xc3\xa9", b"\xff\x00binary"]], dtype=object)
    return {
        "f32": np.array([[np.nan, np.inf, -0.0, 1e-45, 3.4028235e38, 0.1]], dtype=np.float32),
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "f64": np.array([np.pi, -np.inf]),
        "i64": np.array([[np.iinfo(np.int64).min, np.iinfo(np.int64).max]]),
        "u64": np.array([np.iinfo(np.uint64).max], dtype=np.uint64),
        "u8": np.arange(6, dtype=np.uint8).reshape(1, 2, 3),
        "b": np.array([True, False]),
        "s": strings,
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.mark.parametrize("name", list(_values()))
def test_tensors_replay_bit_for_bit_with_dtype_and_shape(name):
    array = _values()[name]
    line = json.dumps(tensor_json(name, array))  # through JSON text, as in the file
    back = ndarray_from_tensor_json(json.loads(line))
    assert back.dtype == array.dtype and back.shape == array.shape
    if array.dtype == object:
        assert back.tolist() == array.tolist()
    else:
        assert back.tobytes() == array.tobytes()  # NaN, -0.0 and subnormals included


def _context(**overrides) -> EventContext:
    values = {"id": "id-1", "source": "kdeploy/test", "model": "m", "version": 3, "protocol": "kserve-grpc",
              "signature": "serving_default", "trace_id": TRACE, "span_id": "00f067aa0ba902b7"}
    return EventContext(**{**values, **overrides})


def test_events_are_kserve_logger_cloudevents_sharing_one_id():
    context = _context()
    request = request_event(context, {"x": np.ones((2, 2), np.float32)}, 1_700_000_000_000_000_000)
    response = response_event(context, {"y": np.zeros((2, 1), np.float32)}, 1_700_000_000_500_000_000)
    assert request["type"] == REQUEST_TYPE and response["type"] == RESPONSE_TYPE
    assert request["id"] == response["id"] == request["data"]["id"] == "id-1"
    assert request["time"] == "2023-11-14T22:13:20.000000Z"
    assert request["traceparent"] == f"00-{TRACE}-00f067aa0ba902b7-01"
    assert response["data"]["model_version"] == "3" and response["data"]["model_name"] == "m"
    headers, body = binary_http(request)
    # Binary mode, as KServe's logger posts it: attributes in ce-* headers, the v2 JSON as the body.
    assert headers["ce-id"] == "id-1" and headers["ce-type"] == REQUEST_TYPE and headers["ce-specversion"] == "1.0"
    assert headers["ce-inferenceservicename"] == "m" and headers["Content-Type"] == "application/json"
    assert "ce-namespace" not in headers  # empty attributes are left out
    assert json.loads(body) == request["data"]


def test_read_pairs_requests_with_answers_across_rotated_files(tmp_path):
    log = tmp_path / "payload.jsonl"
    file = RotatingFile(log, max_bytes=1500, backups=10)
    for index in range(8):
        context = _context(id=f"r{index}", trace_id="")
        file.write(event_line(request_event(context, {"x": np.full((1, 2), index, np.float32)}, 10 + index)))
        file.write(event_line(response_event(context, {"y": np.full((1, 1), index * 2, np.float32)}, 20 + index)))
    file.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) > 2 and "payload.jsonl.1" in files
    for path in tmp_path.iterdir():  # every file holds whole events only
        assert all(json.loads(line)["specversion"] == "1.0" for line in path.read_text().splitlines())
    records = read_payload_log(log)
    assert [r.id for r in records] == [f"r{i}" for i in range(8)]  # oldest first, whichever file they are in
    assert [float(r.outputs["y"][0, 0]) for r in records] == [2.0 * i for i in range(8)]
    assert [r.id for r in read_payload_log(tmp_path)] == [r.id for r in records]  # the folder reads the same


def test_a_line_cut_short_is_skipped_and_other_models_are_left_out(tmp_path):
    log = tmp_path / "payload.jsonl"
    lines = [event_line(request_event(_context(id="a"), {"x": np.ones((1, 2), np.float32)}, 1)),
             event_line(request_event(_context(id="b", model="other"), {"x": np.ones((1, 2), np.float32)}, 2)),
             event_line(request_event(_context(id="c"), {"x": np.ones((1, 2), np.float32)}, 3))[:40]]
    log.write_text("".join(lines))
    (record,) = read_payload_log(log, model="m")
    assert record.id == "a" and record.outputs is None and record.trace_id == TRACE
    with pytest.raises(UsageError, match="no logged request of model 'nope'"):
        read_payload_log(log, model="nope")
    with pytest.raises(UsageError, match="payload log not found"):
        read_payload_log(tmp_path / "missing.jsonl")


def test_replay_keeps_requests_of_the_signature_that_stack():
    signature = ModelSignature.from_json({"name": "serving_default",
                                          "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, -1]}],
                                          "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]})
    from kdeploy.wire.payload_log import LoggedRequest

    def record(index: int, width: int, signature_name: str = "") -> LoggedRequest:
        return LoggedRequest(f"r{index}", "m", 1, "kserve-grpc", signature_name, "", str(index),
                             {"x": np.zeros((1, width), np.float32)})

    kept = replay_rows([record(0, 2), record(1, 3), record(2, 2), record(3, 2, "other")], signature)
    assert [r.id for r in kept] == ["r0", "r2"]
    with pytest.raises(UsageError, match="none of the 1 logged requests"):
        replay_rows([record(3, 2, "other")], signature)


def test_a_full_queue_drops_and_counts_and_a_failing_sink_is_counted(tmp_path):
    metrics = ServerMetrics()
    release = threading.Event()
    written: list[int] = []

    def slow_write(records: list[int]) -> None:
        release.wait(10)
        written.extend(records)

    queue = RecordQueue("payload", slow_write, capacity=3, metrics=metrics)
    accepted = [queue.offer(i) for i in range(20)]  # the writer holds the first; three wait; the rest are dropped
    assert accepted.count(True) in (3, 4) and queue.dropped == 20 - accepted.count(True)
    release.set()
    queue.close()
    assert written == [i for i, ok in enumerate(accepted) if ok]
    metrics.flush()
    dropped = metrics.registry.get_sample_value("kdeploy_log_records_dropped_total",
                                                {"log": "payload", "reason": "queue_full"})
    assert dropped == queue.dropped

    def broken(records: list[int]) -> None:
        raise OSError("disk full")

    failing = RecordQueue("access", broken, capacity=10, metrics=metrics)
    failing.offer(1)
    failing.offer(2)
    failing.close()
    metrics.flush()
    assert metrics.registry.get_sample_value("kdeploy_log_records_dropped_total",
                                             {"log": "access", "reason": "sink_error"}) == 2


def test_sampling_keeps_about_the_rate(tmp_path):
    log = PayloadLog(0.25, file=RotatingFile(tmp_path / "p.jsonl", 0, 0), poster=None, capacity=10_000,
                     metrics=None, seed=1)
    scope = RequestScope("kserve-grpc", "op", "peer", "", "", 0, 0.0)
    for _ in range(4000):
        log.offer(scope, "m", 1, "", {"x": np.ones((1, 1), np.float32)}, {"y": np.ones((1, 1), np.float32)})
    log.close()
    kept = len(read_payload_log(tmp_path / "p.jsonl"))
    assert 850 <= kept <= 1150  # 1000 expected; 5 standard deviations either side


def test_events_are_posted_in_binary_mode(tmp_path):
    received: list[tuple[dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = PayloadLog(1.0, file=None, poster=CloudEventsPoster(f"http://127.0.0.1:{server.server_port}/events"),
                         capacity=10, metrics=None)
        scope = RequestScope("tfserving-rest", "op", "peer", TRACE, "00f067aa0ba902b7", 0, 0.0)
        log.offer(scope, "m", 2, "serving_default", {"x": np.ones((1, 2), np.float32)},
                  {"y": np.ones((1, 1), np.float32)})
        log.close()
    finally:
        server.shutdown()
    (request_headers, request_body), (response_headers, _) = received
    assert request_headers["ce-type"] == REQUEST_TYPE and response_headers["ce-type"] == RESPONSE_TYPE
    assert request_headers["ce-id"] == response_headers["ce-id"]
    assert request_headers["ce-traceparent"].startswith(f"00-{TRACE}-")
    assert request_headers["ce-protocol"] == "tfserving-rest" and request_headers["ce-modelversion"] == "2"
    assert json.loads(request_body)["inputs"][0]["shape"] == [1, 2]


def test_payload_log_settings_are_checked(tmp_path):
    from kdeploy.serve.config import ServeConfig

    def check(**fields) -> None:
        ServeConfig(models=(), **fields)._check_logs()  # noqa: SLF001 - the log settings' own check

    with pytest.raises(UsageError, match="needs a sink"):
        check(payload_log_rate=0.5)
    with pytest.raises(UsageError, match="log nothing at rate 0"):
        check(payload_log_file=tmp_path / "p.jsonl")
    with pytest.raises(UsageError, match="between 0 and 1"):
        check(payload_log_rate=2.0, payload_log_file=tmp_path / "p.jsonl")
    with pytest.raises(UsageError, match="expected http"):
        CloudEventsPoster("collector:8080")


def test_each_worker_writes_log_files_of_its_own(tmp_path):
    from kdeploy.serve.config import ServeConfig
    from kdeploy.serve.workers import _own_files

    config = ServeConfig(models=(), payload_log_rate=1.0, payload_log_file=tmp_path / "payload.jsonl",
                         access_log=str(tmp_path / "access.jsonl"))
    worker = _own_files(config, 1)
    assert worker.payload_log_file == tmp_path / "payload.worker-1.jsonl"
    assert worker.access_log == str(tmp_path / "access.worker-1.jsonl")
    assert _own_files(ServeConfig(models=(), access_log="-"), 0).access_log == "-"  # standard output is shared
    # The replay reads every worker's file from the folder.
    for index in range(2):
        context = _context(id=f"w{index}")
        (tmp_path / f"payload.worker-{index}.jsonl").write_text(
            event_line(request_event(context, {"x": np.ones((1, 2), np.float32)}, index)))
    assert {r.id for r in read_payload_log(tmp_path)} == {"w0", "w1"}

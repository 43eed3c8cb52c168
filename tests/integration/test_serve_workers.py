"""`kdeploy serve --workers N`: several processes on the same ports, metrics summed, drained together."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import start_server
from tests.integration.test_serve_lifecycle import metric, scrape

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_two_workers_share_the_ports_and_their_metrics_add_up(exported_repo):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    proc = start_server("--repository", exported_repo, "--model", "digits", "--workers", "2")
    try:
        assert "workers=2" in proc.banner and "SERVING" in proc.banner
        workers = children(proc.process.pid)
        assert len([p for p in workers if "serve" in Path(f"/proc/{p}/cmdline").read_text()
                    or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]) >= 2
        request = service_pb2.ModelInferRequest(model_name="digits")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(np.zeros((1, 8, 8, 1), np.float32).tobytes())
        for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
            with grpc.insecure_channel(proc.grpc, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
                assert list(response.outputs[0].shape) == [1, 10]
        # Each worker moves its counts into the shared files every 0.25 s: the sum is there within a moment.
        deadline, counted = time.monotonic() + 5, None
        while counted != 40 and time.monotonic() < deadline:
            time.sleep(0.1)
            counted = metric(scrape(proc.metrics), "kdeploy_requests_total", model="digits", protocol="kserve-grpc",
                             status="OK")
        assert counted == 40
    finally:
        assert proc.stop() == 0

"""The server image, run as Kubernetes runs it, answering the official clients and draining under load."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from tests.clients import keras_outputs, tfs_predict
from tests.images.conftest import start_server
from tests.images.containers import Container, unique_name, wait_serving
from tools.images import kdeploy_command

pytestmark = pytest.mark.images

FP32 = {"rtol": 1e-4, "atol": 1e-5}
DRAIN_SECONDS = 10
DRAIN_GRACE_SECONDS = 2


def rows(models_dir, count: int) -> np.ndarray:
    with np.load(models_dir / "digits" / "1" / "validation.npz") as data:
        return data["x"][:count].astype(np.float32)


@pytest.mark.parametrize("protocol", ["tfserving-grpc", "kserve-grpc", "tfserving-rest"])
def test_answers_equal_the_keras_model(server: Container, models_dir, protocol):
    port = server.ports["rest" if protocol == "tfserving-rest" else "grpc"]
    result = subprocess.run([kdeploy_command(), "verify", str(models_dir / "digits"), "--endpoint",
                             f"127.0.0.1:{port}", "--protocol", protocol, "--samples", "64",
                             "--report", str(models_dir.parent / "images" / f"verify-{protocol}")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tflite_backend_answers_equal_the_keras_model(engine, image, models_dir):
    """The image's other backend: LiteRT, from the trimmed venv (its offline tools and WebGPU plugin removed)."""
    container = start_server(engine, image("server"), unique_name("tflite"), env={"KDEPLOY_BACKEND": "tflite"})
    try:
        wait_serving(f"127.0.0.1:{container.ports['grpc']}", container.running, container.logs)
        x = rows(models_dir, 8)
        want = keras_outputs(models_dir, "digits", {"image": x})["probabilities"]
        got = tfs_predict(f"127.0.0.1:{container.ports['grpc']}", "digits", {"image": x})["probabilities"]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        assert "tflite" in container.logs().lower(), container.logs()
    finally:
        container.remove()


def test_official_clients(server: Container, models_dir):
    import tritonclient.grpc as triton

    address = f"127.0.0.1:{server.ports['grpc']}"
    x = rows(models_dir, 8)
    want = keras_outputs(models_dir, "digits", {"image": x})["probabilities"]
    np.testing.assert_allclose(tfs_predict(address, "digits", {"image": x})["probabilities"], want, **FP32)
    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("digits", [tensor]).as_numpy("probabilities"), want, **FP32)
    client.close()


def test_metrics_are_scraped(server: Container, models_dir):
    tfs_predict(f"127.0.0.1:{server.ports['grpc']}", "digits", {"image": rows(models_dir, 1)})
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert re.search(r'^kdeploy_requests_total\{[^}]*model="digits"[^}]*\} [1-9]', text, re.MULTILINE), text[:2000]


def test_startup_log_has_no_warning_or_error(server: Container):
    log = server.logs()
    assert "SERVING" in log, log
    noisy = [line for line in log.splitlines()
             if re.search(r"warn|error|fail|\[W:|\[E:", line, re.IGNORECASE)]
    assert not noisy, "\n".join(noisy)
    print(f"server container: SERVING {server.startup_seconds:.1f} s after `run`")


class Load:
    """Predict calls in a loop on one channel; records every status until stopped."""

    def __init__(self, address: str, x: np.ndarray) -> None:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.request = service_pb2.ModelInferRequest(model_name="digits")
        self.request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
        self.request.raw_input_contents.append(x.tobytes())
        self.channel = grpc.insecure_channel(address)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.statuses: list[tuple[float, str]] = []
        self.details: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.stub.ModelInfer(self.request, timeout=10)
                status = "OK"
            except grpc.RpcError as error:
                status = error.code().name
                self.details.append(f"{time.monotonic():.3f} {status}: {error.details()}")
                time.sleep(0.01)  # refused: try again soon, without spinning on the refusals
            self.statuses.append((time.monotonic(), status))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)
        self.channel.close()


def test_stop_drains_under_load_and_exits_0(engine, image, models_dir):
    env = {"KDEPLOY_DRAIN_SECONDS": str(DRAIN_SECONDS), "KDEPLOY_DRAIN_GRACE_SECONDS": str(DRAIN_GRACE_SECONDS)}
    container = start_server(engine, image("server"), unique_name("drain"), env=env)
    try:
        address = f"127.0.0.1:{container.ports['grpc']}"
        wait_serving(address, container.running, container.logs)
        with Load(address, rows(models_dir, 4)) as load:
            time.sleep(1.0)
            stop_at = time.monotonic()
            engine.run(["stop", "--time", str(DRAIN_SECONDS + 15), container.name], timeout=120)
            stopped_in = time.monotonic() - stop_at
            time.sleep(0.5)
        assert container.state("ExitCode") == "0", container.logs()
        assert stopped_in < DRAIN_SECONDS + 5, f"stop took {stopped_in:.1f} s\n{container.logs()}"
        before = [s for t, s in load.statuses if t < stop_at]
        during = [s for t, s in load.statuses if t >= stop_at]
        assert before and set(before) == {"OK"}, set(before)
        assert "OK" in during, "no request was answered after SIGTERM (the drain grace accepts them)"
        grace_end = stop_at + DRAIN_GRACE_SECONDS
        assert {s for t, s in load.statuses if stop_at <= t < grace_end - 0.2} == {"OK"}, load.details[:5]
        # Every call after SIGTERM is answered or refused with UNAVAILABLE (which clients retry); none is cut off as
        # CANCELLED: the server refuses new calls itself and lets its exit close the sockets.
        unexpected = [(round(t - stop_at, 3), s) for t, s in load.statuses if t >= stop_at
                      and s not in ("OK", "UNAVAILABLE")]
        cancelled = [s for t, s in load.statuses if s == "CANCELLED"]
        assert not unexpected, f"{unexpected[:5]}\n{load.details[:5]}\n{container.logs()}"
        print(f"drain: stop returned in {stopped_in:.1f} s, {len(during)} requests during it: "
              f"{during.count('OK')} OK, {during.count('UNAVAILABLE')} UNAVAILABLE, {len(cancelled)} CANCELLED")
    finally:
        container.remove()

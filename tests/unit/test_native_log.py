"""TensorFlow's start-up chatter is dropped; anything else written to standard error still shows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdeploy.common.native_log import native_stderr_filtered

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796017848.557406    8463 port.cc:153] oneDNN custom operations are on. You may see slightly\n",
    "I0000 00:00:1796017848.557780    8463 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.\n",
]


def test_noise_is_dropped_and_real_errors_kept(capfd: pytest.CaptureFixture[str]) -> None:
    real = "E0000 00:00:17960.1 cc:1] Failed to load the native TensorFlow runtime: libfoo.so not found\n"
    with native_stderr_filtered():
        for line in [NOISE[0], real, *NOISE[1:]]:
            os.write(2, line.encode())  # as C++ code writes: straight to file descriptor 2
        print("python warning", file=sys.stderr)
    # (pytest captures Python's sys.stderr apart from the descriptor, so only the set of lines is compared.)
    assert sorted(capfd.readouterr().err.splitlines(keepends=True)) == sorted([real, "python warning\n"])


def test_standard_error_is_restored(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), native_stderr_filtered():
        raise RuntimeError("boom")
    os.write(2, NOISE[1].encode())
    assert capfd.readouterr().err == NOISE[1]  # outside the block nothing is filtered


@pytest.mark.slow
def test_importing_tensorflow_prints_nothing() -> None:
    code = ("import sys; from kdeploy.common.native_log import import_tensorflow_quietly; "
            "import_tensorflow_quietly(); import tensorflow; print('imported', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "imported\n", proc.stderr

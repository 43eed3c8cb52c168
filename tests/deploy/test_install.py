"""Install by role, for real: the wheel builds without packaging warnings, and a fresh venv with `pip install
'kdeploy[serve]'` (pinned by requirements/server.txt, as the server image installs it) serves an exported ONNX version
over KServe v2 REST without importing TensorFlow, and names the extra a command lacks.

Slow (a venv and a pip install from the package index: about two minutes, most of it downloads): marked `install`,
which `make test` leaves out and `make test-install` (CI, after `make test`) runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.test_images import REQUIREMENTS, pins

pytestmark = [pytest.mark.slow, pytest.mark.install]
ROOT = Path(__file__).resolve().parents[2]
PACKAGING_WARNING = re.compile(r"BuildBackendWarning|SetuptoolsDeprecationWarning|absent from the `packages`|"
                               r"Package would be ignored|UserWarning")


def run(*command: object, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, check=False,
                          **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    result = run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--wheel-dir", out,
                 ROOT)
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("kdeploy-*.whl")
    return built, result.stdout + result.stderr


def test_the_wheel_builds_without_packaging_warnings(wheel):
    _, log = wheel
    assert not [line for line in log.splitlines() if PACKAGING_WARNING.search(line)]


def test_the_check_would_see_setuptools_warnings():
    sample = "  /tmp/x/build_py.py:215: BuildBackendWarning: Package 'kdeploy.k8s.base' is absent from the `packages`"
    assert PACKAGING_WARNING.search(sample)


@pytest.fixture(scope="module")
def serve_venv(wheel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    venv = tmp_path_factory.mktemp("serve-venv") / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    result = run(venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-c",
                 REQUIREMENTS / "server.txt", f"{wheel[0]}[serve]")
    assert result.returncode == 0, result.stdout + result.stderr
    return venv, result.stdout + result.stderr


def test_serve_extra_installs_quietly_and_exactly_the_pinned_set(serve_venv):
    venv, log = serve_venv
    # The machine's own pip configuration may warn about its index locations; nothing else may warn.
    warnings = [line for line in log.splitlines() if "warning" in line.lower() and "Location '" not in line]
    assert not warnings, warnings
    frozen = run(venv / "bin" / "python", "-m", "pip", "freeze", "--exclude", "kdeploy").stdout.splitlines()
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version
                 for name, version in (line.split("==") for line in frozen if "==" in line)}
    assert installed == pins(REQUIREMENTS / "server.txt")
    sizes = run("du", "-sm", next((venv / "lib").glob("python*/site-packages"))).stdout.split()[0]
    print(f"kdeploy[serve] site-packages: {sizes} MiB")


def test_a_serve_install_serves_onnx_without_tensorflow(serve_venv, onnx_repository, tmp_path):
    venv, _ = serve_venv
    command = [venv / "bin" / "kdeploy", "serve", "--repository", onnx_repository, "--grpc-port", "0", "--rest-port",
               "0", "--metrics-port", "0", "--drain-grace-seconds", "0"]
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    try:
        banner = proc.stdout.readline()
        assert "SERVING" in banner, banner + proc.stderr.read()
        rest = re.search(r"rest=(\S+)", banner)[1]
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                       "data": [-1.0, 2.0, -3.0, 4.0]}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://{rest}/v2/models/relu/infer", data=body),
                                    timeout=30) as response:
            assert json.loads(response.read())["outputs"][0]["data"] == [0.0, 2.0, 0.0, 4.0]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "tensorflow" not in maps and "onnxruntime" in maps
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    imported = run(venv / "bin" / "python", "-c", "import sys, kdeploy.cli, kdeploy.serve.server; "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))",
                   cwd=tmp_path)  # not the checkout, whose kdeploy/ folder would shadow the installed package
    assert imported.stdout.strip() == "[]", imported.stderr


def test_a_serve_install_names_the_extra_other_commands_need(serve_venv, tmp_path):
    venv, _ = serve_venv
    result = run(venv / "bin" / "kdeploy", "export", "model.keras", "--repository", "r", "--name", "m", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("kdeploy export: error: needs the export extra: pip install 'kdeploy[export]' (")
    assert len(result.stderr.strip().splitlines()) == 1

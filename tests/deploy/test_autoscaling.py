"""The autoscaling components, checked offline: KEDA's ScaledObject against KEDA's own CRD schema (strict), the rules
its admission webhook applies, the HPA with custom metrics against Kubernetes' schema, and every metric the queries
name against what kdeploy's server really exposes."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import K8S, documents, find, kustomize, validate

SCHEMAS = Path(__file__).parent / "schemas"
KEDA = "autoscale-keda"
CUSTOM = "autoscale-custom-metrics"
PROMQL_FUNCTIONS = {"sum", "rate", "histogram_quantile", "by", "le"}


def _with_component(tmp_path: Path, component: str, overlay: str = "onnx") -> str:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    kustomization = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + f"components:\n  - ../../components/{component}\n")
    return kustomize(tree / "overlays" / overlay)


def _strict(schema: Any) -> Any:
    """The CRD's schema as the API server's strict field validation applies it: no field it does not declare."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def scaledobject_schema() -> dict:
    (crd,) = [d for d in yaml.safe_load_all((SCHEMAS / "keda.sh_scaledobjects.yaml").read_text()) if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def keda_docs(tmp_path_factory) -> list[dict]:
    return documents(_with_component(tmp_path_factory.mktemp("keda"), KEDA))


def _exposed_metric_names() -> set[str]:
    """Every series name a serving kdeploy exposes (histograms as _bucket/_sum/_count), after one of each event."""
    from kdeploy.serve.metrics import ServerMetrics

    metrics = ServerMetrics()
    metrics.request_done("m", "1", "kserve-grpc", "OK", 0.001)
    metrics.execution("m", 1, 0.001, 4)
    metrics.queued("m", [0.002])
    metrics.queue_changed("m", 1)
    metrics.sample_inflight(lambda: {"m": 3})
    metrics.flush()
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def _metric_names(query: str) -> set[str]:
    """The metric names a PromQL query selects (identifiers followed by a label matcher or a range)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", query)) - PROMQL_FUNCTIONS


def _balanced(text: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in text:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_keda_component_validates_against_kedas_crd_and_kubernetes(keda_docs, scaledobject_schema, tmp_path):
    scaled = find(keda_docs, "ScaledObject", "model-server")
    jsonschema.validate(scaled, scaledobject_schema)
    others = [d for d in keda_docs if d["kind"] != "ScaledObject"]
    result = validate(yaml.safe_dump_all(others), tmp_path / "rendered.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_strict_schema_refuses_a_misspelt_field(keda_docs, scaledobject_schema):
    scaled = copy.deepcopy(find(keda_docs, "ScaledObject", "model-server"))
    scaled["spec"]["triggers"][0]["metricTyp"] = "AverageValue"
    with pytest.raises(jsonschema.ValidationError, match="metricTyp"):
        jsonschema.validate(scaled, scaledobject_schema)


def test_keda_scales_the_deployment_alone_as_its_webhook_requires(keda_docs):
    # KEDA's admission webhook (apis/keda/v1alpha1/scaledobject_webhook.go) refuses a ScaledObject whose workload
    # another HPA scales, a cpu trigger on a container without a CPU request, and min above max.
    assert not [d for d in keda_docs if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = find(keda_docs, "ScaledObject", "model-server")["spec"]
    deployment = find(keda_docs, "Deployment", "model-server")
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                       deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the HPA KEDA makes owns the count
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    triggers = {t["type"] for t in scaled["triggers"]}
    assert triggers == {"prometheus", "cpu"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]


def test_keda_prometheus_triggers_name_metrics_kdeploy_exposes(keda_docs):
    exposed = _exposed_metric_names()
    scaled = find(keda_docs, "ScaledObject", "model-server")["spec"]
    prometheus = [t for t in scaled["triggers"] if t["type"] == "prometheus"]
    assert {t["name"] for t in prometheus} == {"inflight", "queue-time"}
    for trigger in prometheus:
        metadata = trigger["metadata"]
        # The prometheus scaler's required settings (pkg/scalers/prometheus_scaler.go), all strings.
        assert {"serverAddress", "query", "threshold"} <= set(metadata)
        assert all(isinstance(value, str) for value in metadata.values())
        assert float(metadata["threshold"]) > 0
        assert metadata["serverAddress"].startswith("http")
        query = metadata["query"]
        assert _balanced(query), query
        names = _metric_names(query)
        assert names and names <= exposed, (names - exposed, sorted(exposed))
        assert 'namespace="' in query and 'pod=~"model-server-' in query  # one Deployment's pods, not the cluster's
    kinds = {t["name"]: t["metricType"] for t in prometheus}
    assert kinds == {"inflight": "AverageValue", "queue-time": "Value"}  # a sum shared out; a latency as it is


def test_hpa_with_custom_metrics_validates_and_asks_for_what_the_adapter_publishes(tmp_path):
    manifests = _with_component(tmp_path, CUSTOM)
    result = validate(manifests, tmp_path / "rendered.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    hpa = find(documents(manifests), "HorizontalPodAutoscaler", "model-server")["spec"]
    assert {m["type"] for m in hpa["metrics"]} == {"Resource", "Pods"}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    rules = yaml.safe_load((K8S / "components" / CUSTOM / "prometheus-adapter-rules.yaml").read_text())["rules"]
    published = {rule["name"]["as"] for rule in rules}
    assert wanted == {"kdeploy_inflight_requests"} and wanted <= published
    exposed = _exposed_metric_names()
    for rule in rules:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])[1]
        assert series in exposed, series
        assert re.fullmatch(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        query = rule["metricsQuery"]
        assert _balanced(query) and "<<.Series>>{<<.LabelMatchers>>}" in query and "<<.GroupBy>>" in query
        assert set(re.findall(r"<<\.(\w+)>>", query)) <= {"Series", "LabelMatchers", "GroupBy"}


def test_the_base_keeps_its_cpu_hpa(rendered):
    hpa = find(documents(rendered["onnx"]), "HorizontalPodAutoscaler", "model-server")["spec"]
    assert [m["type"] for m in hpa["metrics"]] == ["Resource"]

"""The kserve overlay: kdeploy's ClusterServingRuntimes and an InferenceService, validated against KServe's own CRD
schemas (tests/deploy/schemas/, see its README) made strict as the API server's field validation is, their pod
parts against Kubernetes' schemas, and their arguments against `kdeploy serve`'s parser."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kdeploy.k8s_render import render_overlay
from tests.deploy.conftest import documents, validate

SCHEMAS = Path(__file__).parent / "schemas"


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as `kubectl apply --validate=strict` does (a CRD's own schema
    leaves them to pruning, which would drop a misspelt field silently)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if ("properties" in result and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    return result


def schema(name: str) -> dict[str, Any]:
    loaded = strict(json.loads((SCHEMAS / name).read_text()))
    loaded["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server, not the CRD
    return loaded


# Built once: jsonschema.validate() would check the 600 KB schema itself on every call (20 s each).
RUNTIME_SCHEMA = jsonschema.Draft7Validator(schema("clusterservingruntime-v1alpha1.json"))
ISVC_SCHEMA = jsonschema.Draft7Validator(schema("inferenceservice-v1beta1.json"))


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return documents(render_overlay("kserve", images=["localhost/kdeploy-server:0.1.0",
                                                      "kdeploy-trainer=localhost/kdeploy-trainer:0.1.0"]))


def runtimes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterServingRuntime"}


def test_the_schemas_are_valid_json_schemas():
    for validator in (RUNTIME_SCHEMA, ISVC_SCHEMA):
        jsonschema.Draft7Validator.check_schema(validator.schema)


def test_runtimes_and_inference_service_validate_against_kserves_crds(docs):
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterServingRuntime"] * 3 + ["InferenceService"]
    for doc in docs:
        (RUNTIME_SCHEMA if doc["kind"] == "ClusterServingRuntime" else ISVC_SCHEMA).validate(doc)


@pytest.mark.parametrize("path, field", [(("spec",), "supportedModelFormat"), (("spec", "containers", 0), "argz"),
                                         (("spec", "supportedModelFormats", 0), "autoselect")])
def test_a_misspelt_runtime_field_fails_validation(docs, path, field):
    doc = copy.deepcopy(next(iter(runtimes(docs).values())))
    target = doc
    for key in path:
        target = target[key]
    target[field] = True
    with pytest.raises(jsonschema.ValidationError):
        RUNTIME_SCHEMA.validate(doc)


def test_a_misspelt_inference_service_field_fails_validation(docs):
    isvc = copy.deepcopy(next(d for d in docs if d["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError):
        ISVC_SCHEMA.validate(isvc)


def test_each_runtime_is_a_valid_kubernetes_pod(docs, tmp_path):
    """The runtime's containers and volumes become the predictor pod's: Kubernetes' own schemas, strictly."""
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
             "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"]}}
            for name, runtime in runtimes(docs).items()]
    result = validate("\n---\n".join(json.dumps(pod) for pod in pods), tmp_path / "pods.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_arguments_are_kdeploy_serve_flags_and_ports_probes_and_scraping_agree(docs):
    from kdeploy.cli import build_parser
    from kdeploy.serve.adapters.kserve_rest import is_kserve_path

    backends = {}
    for name, runtime in runtimes(docs).items():
        (container,) = runtime["spec"]["containers"]
        assert container["command"] == ["tini", "--", "kdeploy", "serve"]
        argv = [arg.replace("{{.Name}}", "digits") for arg in container["args"]]
        args = build_parser().parse_args(["serve", *argv])
        assert str(args.model_dir) == "/mnt/models" and args.model_name == "digits"
        backends[name] = args.backend
        assert container["ports"][0]["containerPort"] == args.rest_port == 8080 and args.host == "0.0.0.0"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == args.rest_port
            assert is_kserve_path(container[probe]["httpGet"]["path"])
        annotations = runtime["spec"]["annotations"]
        assert annotations["prometheus.kserve.io/port"] == str(args.metrics_port)
        assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2", "grpc-v2"}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts and container["securityContext"]["readOnlyRootFilesystem"] is True
        image = container["image"]
        assert image == ("localhost/kdeploy-trainer:0.1.0" if args.backend == "savedmodel"
                         else "localhost/kdeploy-server:0.1.0")
    assert backends == {"kdeploy-onnx": "onnx", "kdeploy-tflite": "tflite", "kdeploy-tensorflow": "savedmodel"}
    formats = {f["name"]: f for r in runtimes(docs).values() for f in r["spec"]["supportedModelFormats"]}
    assert set(formats) == {"onnx", "tflite", "tensorflow"} and all(f["autoSelect"] for f in formats.values())


def test_the_inference_service_names_a_runtime_that_serves_its_format(docs):
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    runtime = runtimes(docs)[model["runtime"]]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] and model["storageUri"]


def test_model_flag_renames_the_inference_service():
    rendered = documents(render_overlay("kserve", model="mnist"))
    assert next(d for d in rendered if d["kind"] == "InferenceService")["metadata"]["name"] == "mnist"

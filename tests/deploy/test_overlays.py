"""What each overlay adds: TF Serving's configs, the load-test Job and Locust, the model-from-PVC component."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from tests.deploy.conftest import K8S, REPO, assert_hardened, config_map_data, documents, find, kustomize, validate


def _tfserving(rendered: dict[str, str]) -> tuple[list[dict], dict, dict[str, str]]:
    docs = documents(rendered["tfserving"])
    pod = find(docs, "Deployment", "model-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    files = {f"{mount['mountPath']}/{key}": value
             for key, value in config_map_data(docs, volume["configMap"]["name"]).items()}
    return docs, container, files


def test_tfserving_models_config_parses_with_the_official_message(rendered):
    from tensorflow_serving.config import model_server_config_pb2

    _, container, files = _tfserving(rendered)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert flags["enable_batching"] == "true"
    config = text_format.Parse(files[flags["model_config_file"]], model_server_config_pb2.ModelServerConfig())
    models = {c.name: c for c in config.model_config_list.config}
    assert models and all(c.base_path == f"/models/{name}" and c.model_platform == "tensorflow"
                           for name, c in models.items())
    # The probes ask for a model TF Serving actually serves.
    assert container["readinessProbe"]["httpGet"]["path"].split("/")[3] in models


def test_tfserving_batching_and_monitoring_files_parse_and_match_the_scrape_path(rendered):
    from kdeploy.wire.protos.messages import load_protos

    docs, container, files = _tfserving(rendered)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    protos = load_protos()
    batching = text_format.Parse(files[flags["batching_parameters_file"]],
                                 protos.cls("tensorflow.serving.BatchingParameters")(), descriptor_pool=protos.pool)
    assert list(batching.allowed_batch_sizes)[-1] == batching.max_batch_size.value
    monitoring = text_format.Parse(files[flags["monitoring_config_file"]],
                                   protos.cls("tensorflow.serving.MonitoringConfig")(), descriptor_pool=protos.pool)
    annotations = find(docs, "Deployment", "model-server")["spec"]["template"]["metadata"]["annotations"]
    assert monitoring.prometheus_config.enable
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert annotations["prometheus.io/port"] == flags["rest_api_port"]


def test_tfserving_configs_are_what_kdeploy_configs_writes(tmp_path, kdeploy):
    # The committed config/ must not drift from the generator: regenerate it for a repository holding the same
    # model (a manifest is all `kdeploy configs` reads) and compare byte for byte.
    from kdeploy.contract.manifest import Artifact, Manifest, write_manifest
    from kdeploy.contract.signature import ModelSignature

    committed = K8S / "overlays" / "tfserving" / "config"
    signature = ModelSignature.from_json({
        "name": "serving_default",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 8, 8, 1]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]})
    version_dir = tmp_path / "repo" / "digits" / "1"
    version_dir.mkdir(parents=True)
    artifact = {fmt: Artifact(format=fmt, path=path, bytes=1, sha256="0" * 64)
                for fmt, path in (("savedmodel", "saved_model.pb"), ("onnx", "model.onnx"))}
    write_manifest(version_dir, Manifest(name="digits", version=1, signature=signature,
                                         source=Artifact(format="keras", path="model.keras", bytes=1, sha256="0" * 64),
                                         artifacts=artifact))
    result = kdeploy("configs", "--repository", tmp_path / "repo", "--out", tmp_path / "out", "--base-path", "/models")
    assert result.code == 0, result.err
    for name in ("models.config", "batching_parameters.txt", "monitoring.config"):
        assert (committed / name).read_text() == (tmp_path / "out" / "tfserving" / name).read_text(), name


def test_tfserving_flags_match_the_image_entrypoint(rendered):
    # The Dockerfile's ENTRYPOINT (docker run) and the Deployment (Kubernetes) start TF Serving the same way.
    _, container, _ = _tfserving(rendered)
    text = (REPO / "Dockerfile").read_text()
    stage = text[text.index("AS tfserving"):]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*?\])$", stage.replace("\\\n", ""), re.MULTILINE)[1])
    assert entrypoint[:3] == container["command"] == ["tini", "--", "tensorflow_model_server"]
    assert set(entrypoint[3:]) <= set(container["args"])


def _job(docs: list[dict]) -> tuple[dict, dict, dict[str, str]]:
    job = find(docs, "Job", "model-loadtest")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    return job, container, env


def test_loadtest_job_runs_kdeploy_loadtest_with_an_slo_and_fails_when_missed(rendered, kdeploy):
    from kdeploy.cli import build_parser
    from kdeploy.loadtest.cli import config_from_args
    from kdeploy.loadtest.config import parse_target
    from kdeploy.loadtest.slo import parse_slo

    job, container, env = _job(documents(rendered["loadtest"]))
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] > 0
    fail_rules = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert 1 in fail_rules[0]["onExitCodes"]["values"]
    # Kubernetes expands $(VAR) from the container's environment; every reference must exist.
    references = {m for arg in container["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
    assert references <= set(env), sorted(references - set(env))
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in container["args"]]
    assert argv[:2] == ["kdeploy", "loadtest"]
    args = build_parser().parse_args(argv[1:])
    assert args.slo and args.allow_remote and args.out == Path("/report")
    config = config_from_args(args, parse_target(args.target), args.out)  # raises UsageError on a bad value
    assert parse_slo(args.slo) and config.duration_s <= spec["activeDeadlineSeconds"] / 2
    assert "/report" in {m["mountPath"] for m in container["volumeMounts"]}


def test_load_targets_the_servers_service(rendered):
    server = documents(rendered["onnx"])
    service = find(server, "Service", "model-server")
    grpc_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    _, _, env = _job(documents(rendered["loadtest"]))
    assert env["LOCUST_HOST"] == f"{service['metadata']['name']}:{grpc_port}"


def test_locust_master_and_workers_meet_on_the_master_service(rendered):
    docs = documents(rendered["loadtest"])
    master = find(docs, "Deployment", "locust-master")["spec"]["template"]
    worker = find(docs, "Deployment", "locust-worker")["spec"]["template"]
    service = find(docs, "Service", "locust-master")
    assert service["spec"]["selector"].items() <= master["metadata"]["labels"].items()
    assert "--master" in master["spec"]["containers"][0]["args"]
    worker_args = worker["spec"]["containers"][0]["args"]
    assert "--worker" in worker_args and f"--master-host={service['metadata']['name']}" in worker_args
    assert 5557 in {p["port"] for p in service["spec"]["ports"]}


def test_locustfile_reads_the_workload_from_the_config_map(rendered):
    # The master and workers get the workload only through KDEPLOY_LOADTEST_* variables: parse them with the
    # locustfile's own arguments on Locust's parser (in a child process: importing Locust patches with gevent).
    _, _, env = _job(documents(rendered["loadtest"]))
    code = ("import json\n"
            "from locust.argument_parser import LocustArgumentParser\n"
            "from kdeploy.loadtest.config import WorkloadSettings, add_locust_arguments\n"
            "parser = LocustArgumentParser()\n"
            "add_locust_arguments(parser)\n"
            "s = WorkloadSettings.from_options(parser.parse_args([]))\n"
            "print(json.dumps({'model': s.model, 'protocol': s.protocol, 'repository': str(s.repository),"
            " 'batch': s.batch}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, **env}, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "model": env["KDEPLOY_LOADTEST_MODEL"], "protocol": env["KDEPLOY_LOADTEST_PROTOCOL"],
        "repository": env["KDEPLOY_LOADTEST_REPOSITORY"], "batch": int(env["KDEPLOY_LOADTEST_BATCH"])}


@pytest.mark.parametrize("overlay", ["onnx", "tfserving"])
def test_model_from_pvc_component_validates_and_hides_the_baked_models(overlay, tmp_path):
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    kustomization = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "components:\n  - ../../components/model-from-pvc\n")
    manifests = kustomize(tree / "overlays" / overlay)
    result = validate(manifests, tmp_path / "rendered.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    pod = find(documents(manifests), "Deployment", "model-server")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert_hardened(init, "fetch-models")
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}["/models"]
    assert "emptyDir" in volumes[models]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}["/models"] == models
    assert any("persistentVolumeClaim" in volumes[m["name"]] for m in init["volumeMounts"])

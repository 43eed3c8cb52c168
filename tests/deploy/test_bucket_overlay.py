"""The bucket overlay: the server reads its models from object storage (no PVC), a Job exports to the bucket."""

from __future__ import annotations

import re
import shlex

from tests.deploy.conftest import assert_hardened, config_map_data, documents, find


def _server(docs):
    pod = find(docs, "Deployment", "model-server")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return pod, container


def test_the_server_reads_a_bucket_into_an_emptydir_cache_with_optional_secret_credentials(rendered):
    from kdeploy.storage.urls import StorageUrl, parse_location

    docs = documents(rendered["bucket"])
    pod, container = _server(docs)
    refs = container["envFrom"]
    env = config_map_data(docs, refs[0]["configMapRef"]["name"])
    assert isinstance(parse_location(env["KDEPLOY_REPOSITORY"]), StorageUrl)
    assert float(env["KDEPLOY_STORAGE_POLL_SECONDS"]) >= 10  # a remote store is not listed every second
    assert refs[1] == {"secretRef": {"name": "model-storage", "optional": True}}  # workload identity needs none
    cache = {e["name"]: e["value"] for e in container["env"]}["KDEPLOY_CACHE_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[cache]]
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"


def test_service_accounts_carry_each_clouds_workload_identity_annotation(rendered):
    docs = documents(rendered["bucket"])
    for name in ("model-server", "model-exporter"):
        annotations = find(docs, "ServiceAccount", name)["metadata"]["annotations"]
        assert {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account",
                "azure.workload.identity/client-id"} <= set(annotations), name


def test_the_export_job_runs_kdeploy_train_and_export_to_the_same_bucket(rendered):
    from kdeploy.cli import build_parser

    docs = documents(rendered["bucket"])
    job = find(docs, "Job", "model-export")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert_hardened(container, "model-export")
    server_env = config_map_data(docs, _server(docs)[1]["envFrom"][0]["configMapRef"]["name"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    ref = next(e for e in container["env"] if e["name"] == "KDEPLOY_REPOSITORY")["valueFrom"]["configMapKeyRef"]
    env["KDEPLOY_REPOSITORY"] = config_map_data(docs, ref["name"])[ref["key"]]
    assert env["KDEPLOY_REPOSITORY"] == server_env["KDEPLOY_REPOSITORY"]
    script = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], container["command"][-1])
    commands = [shlex.split(part) for part in script.split("&&")]
    assert [c[:2] for c in commands] == [["kdeploy", "train"], ["kdeploy", "export"]]
    export = build_parser().parse_args(commands[1][1:])
    assert export.repository == server_env["KDEPLOY_REPOSITORY"] and export.name == "digits"
    assert str(export.model) == commands[0][commands[0].index("--out") + 1] + "/model.keras"

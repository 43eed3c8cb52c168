"""`kdeploy k8s render`: valid YAML with the image and model substituted; one-line usage errors with exit 2."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import K8S, OVERLAYS, documents, find, validate

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_prints_the_overlay_with_the_image_substituted(overlay, kdeploy, rendered, tmp_path):
    result = kdeploy("k8s", "render", "--overlay", overlay, "--image", "registry.local:5000/team/img:1.2.3")
    assert result.code == 0, result.err
    docs = documents(result.out)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        (d["kind"], d["metadata"]["name"]) for d in documents(rendered[overlay])}
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    # The bucket overlay's export Job runs the trainer image, which --image (the overlay's image) leaves alone.
    others = {"registry.example.com/kdeploy/kdeploy-trainer:0.1.0"} if overlay == "bucket" else set()
    assert images == {"registry.local:5000/team/img:1.2.3", *others}
    assert validate(result.out, tmp_path / "out.yaml").returncode == 0


def test_render_without_options_is_plain_kubectl_kustomize(kdeploy, rendered):
    result = kdeploy("k8s", "render", "--overlay", "onnx")
    assert result.code == 0 and result.out == rendered["onnx"]


def test_render_names_an_image_by_placeholder_with_a_digest(kdeploy):
    result = kdeploy("k8s", "render", "--overlay", "onnx", "--image", f"kdeploy-server=ghcr.io/acme/server@{DIGEST}")
    assert result.code == 0, result.err
    (container,) = find(documents(result.out), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/acme/server@{DIGEST}"


def test_render_sets_the_model_where_each_overlay_names_it(kdeploy):
    def docs(overlay: str) -> list[dict]:
        result = kdeploy("k8s", "render", "--overlay", overlay, "--model", "mnist")
        assert result.code == 0, result.err
        return documents(result.out)

    onnx = docs("onnx")
    assert find(onnx, "ConfigMap", "model-server")["data"]["KDEPLOY_MODEL"] == "mnist"
    (container,) = find(docs("tfserving"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "/v1/models/mnist/metadata", "/v1/models/mnist"}
    assert find(docs("loadtest"), "ConfigMap", "loadtest")["data"]["KDEPLOY_LOADTEST_MODEL"] == "mnist"


@pytest.mark.parametrize("argv, message", [
    (["--overlay", "nope"], "unknown overlay 'nope'; choose from "
     + ", ".join(sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()))),
    (["--overlay", "onnx", "--image", "Not An Image"], "--image 'Not An Image'"),
    (["--overlay", "onnx", "--model", "../etc"], "--model '../etc'"),
    (["--overlay", "onnx", "--k8s-dir", "/nonexistent"], "no k8s/overlays folder /nonexistent"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, kdeploy):
    result = kdeploy("k8s", "render", *argv)
    assert result.code == 2 and result.out == ""
    assert result.err.count("\n") == 1 and message in result.err, result.err


def test_missing_overlay_flag_is_a_usage_error(kdeploy):
    result = kdeploy("k8s", "render")
    assert result.code == 2 and result.err.count("\n") == 1 and "--overlay" in result.err

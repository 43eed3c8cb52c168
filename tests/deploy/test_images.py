"""The images' package sets: pinned like constraints.txt, no TensorFlow in the server, and enough to run.

Nothing can be built here (no Docker engine), so the server image's contents are checked the way it will run:
a child process that can import only the standard library, kdeploy's packages and the distributions listed in
requirements/server.txt serves a real ONNX model, answers the gRPC health check and drains on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import grpc
import pytest

from tests.deploy.conftest import REPO

REQUIREMENTS = REPO / "requirements"
PROJECT_PACKAGES = ("kdeploy", "export", "serve", "train", "loadtest")
HEAVY = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "keras", "tf2onnx", "tf-keras", "scikit-learn",
         "onnx", "torch", "jax")
"""Never in the server images (LiteRT is: the serve extra's TFLite backend, about 60 MB)."""
GPU_ONLY = ("onnxruntime-gpu",)
"""Not in constraints.txt (the dev machine has no GPU): pinned in server-gpu.txt by their own resolution."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a requirements file; every entry must be an exact pin."""
    result = {}
    for raw_line in path.read_text().splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+-]*)", line)
        assert match, f"{path.name}: {line!r} is not an exact NAME==VERSION pin"
        result[_normal(match[1])] = match[2]
    return result


@pytest.mark.parametrize("name", ["server.txt", "server-gpu.txt", "loadtest.txt", "build.txt"])
def test_requirements_are_exact_pins_that_agree_with_constraints(name):
    constraints = pins(REPO / "constraints.txt")
    for package, pinned in pins(REQUIREMENTS / name).items():
        if package in constraints:
            assert pinned == constraints[package], \
                f"{name}: {package}=={pinned}, constraints.txt has {constraints[package]}"
        elif package in GPU_ONLY or package.startswith("nvidia-"):
            assert name == "server-gpu.txt", f"{name}: {package} belongs in server-gpu.txt only"
        else:
            # Not in constraints.txt (yet): it must be the version the tests ran with.
            try:
                installed = version(package)
            except PackageNotFoundError:
                pytest.fail(f"{name}: {package}=={pinned} is neither in constraints.txt nor installed here")
            assert pinned == installed, f"{name}: {package}=={pinned}, but {installed} is what was tested"


def test_server_images_have_no_tensorflow():
    for name in ("server.txt", "server-gpu.txt"):
        packages = pins(REQUIREMENTS / name)
        assert not [p for p in packages if p in HEAVY or p.startswith("tensorflow")], name
        assert {"grpcio", "grpcio-health-checking", "protobuf", "numpy", "prometheus-client"} <= set(packages), name
    assert "onnxruntime" in pins(REQUIREMENTS / "server.txt")
    # onnxruntime and onnxruntime-gpu install the same module: never both.
    gpu = pins(REQUIREMENTS / "server-gpu.txt")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    loadtest = pins(REQUIREMENTS / "loadtest.txt")
    assert {"locust", "matplotlib"} <= set(loadtest)
    assert not [p for p in loadtest if p in HEAVY or p.startswith(("tensorflow", "onnxruntime", "ai-edge-litert"))]


def allowed_modules(requirements: str) -> list[str]:
    """Top-level modules an image with these distributions (and kdeploy) can import."""
    wanted = set(pins(REQUIREMENTS / requirements))
    modules = {m for m, dists in packages_distributions().items() if any(_normal(d) in wanted for d in dists)}
    missing = wanted - {_normal(d) for dists in packages_distributions().values() for d in dists}
    assert not missing - {"onnxruntime-gpu"} - {p for p in wanted if p.startswith("nvidia-")}, missing
    return sorted(modules | set(PROJECT_PACKAGES))


# Run Python with imports limited to the standard library and the given top-level modules, then run `argv`
# through kdeploy's CLI (or import the modules listed in `imports`).
_GUARD = """
import importlib.abc, importlib.machinery, json, os, sys, sysconfig
allowed = set(json.loads(sys.argv[1]))
stdlib = [sysconfig.get_path("stdlib"), os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload")]
class ImageContents(importlib.abc.MetaPathFinder):
    # Stands in for the path finder: a module the image lacks is simply not found, as it would not be there, so
    # optional-dependency probes (importlib.util.find_spec) get None and imports ModuleNotFoundError.
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if (top in allowed or top in sys.stdlib_module_names
                or importlib.machinery.PathFinder.find_spec(top, stdlib) is not None):  # private stdlib modules
            return importlib.machinery.PathFinder.find_spec(name, path, target)
        return None
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = ImageContents()
for module in json.loads(sys.argv[2]):
    __import__(module)
from kdeploy.cli import main
sys.exit(main(json.loads(sys.argv[3])))
"""


def run_guarded(requirements: str, imports: list[str], argv: list[str], **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _GUARD, json.dumps(allowed_modules(requirements)), json.dumps(imports),
         json.dumps(argv)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_guard_blocks_what_the_image_lacks():
    # The guard is real: TensorFlow is installed here, but not importable under server.txt's contents.
    proc = run_guarded("server.txt", ["tensorflow"], ["--help"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "No module named 'tensorflow'" in err


@pytest.mark.parametrize("requirements, argv, extra", [
    ("server.txt", ["export", "model.keras", "--repository", "r", "--name", "m"], "export"),
    ("server.txt", ["train", "--recipe", "digits-cnn", "--out", "t"], "export"),
    ("server.txt", ["loadtest", "--target", "127.0.0.1:9", "--model", "m", "--out", "o"], "loadtest"),
    ("server.txt", ["serve", "--repository", ".", "--backend", "savedmodel"], "export"),
    ("loadtest.txt", ["serve", "--repository", "."], "serve"),
    ("loadtest.txt", ["verify", "r/m"], "export"),
])
def test_a_missing_extra_is_one_line_naming_it(requirements, argv, extra):
    """A command run where its extra is not installed (an image's contents) names the extra to install, exit 2."""
    proc = run_guarded(requirements, [], argv)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"kdeploy {argv[0]}: error: needs the {extra} extra: pip install 'kdeploy[{extra}]' (")


def test_server_image_contents_serve_and_drain(onnx_repository):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    argv = ["serve", "--repository", str(onnx_repository), "--grpc-port", "0", "--rest-port", "0",
            "--metrics-port", "0", "--drain-grace-seconds", "0", "--drain-seconds", "10"]
    proc = run_guarded("server.txt", [], argv)
    try:
        banner = proc.stdout.readline()
        assert "SERVING" in banner, banner + proc.stderr.read()
        port = re.search(r"grpc=[^ ]*:(\d+)", banner)[1]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "relu"):
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        # What `kubectl delete pod` (and tini) does: SIGTERM, then the server drains and exits 0.
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "not in the image" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_loadtest_image_contents_load_the_cli_runner_and_locustfile():
    imports = [
        "kdeploy.loadtest.runner",
        "kdeploy.loadtest.report",
        "kdeploy.loadtest.payloads",
        "kdeploy.loadtest.locustfile",
        "matplotlib.figure",
    ]
    proc = run_guarded("loadtest.txt", imports, ["loadtest", "--help"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "--slo" in out

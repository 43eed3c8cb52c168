"""One import root: the wheel installs `kdeploy` only, and no code imports a stage by its bare folder name."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"train": "train", "export": "export", "serve": "serve", "loadtest": "loadtest"}
"""Folder at the repository root -> its package below `kdeploy`."""
SOURCE_DIRS = ["kdeploy", *STAGES, "tests", "benchmarks"]


def python_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def bare_stage_imports(source: str, label: str) -> list[str]:
    """`import serve...` / `from export... import` lines of one file (stages must be imported as kdeploy.X)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=label)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{label}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in STAGES]
    return found


def test_no_code_imports_a_bare_stage_name() -> None:
    offenders = [line for path in python_files()
                 for line in bare_stage_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not offenders, "import these as kdeploy.<stage>:\n" + "\n".join(offenders)


def test_the_check_finds_a_bare_import() -> None:
    sample = "import os\nfrom serve.config import ServeConfig\nimport kdeploy.serve\nimport train\n"
    assert bare_stage_imports(sample, "x.py") == ["x.py:2: serve.config", "x.py:4: train"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("kdeploy-*.whl")
    return built


def test_wheel_has_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kdeploy"}, sorted(top)


def test_wheel_holds_every_module_and_the_protocol_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder in ["kdeploy", *STAGES]:
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT / folder).as_posix()
            expected.add(f"kdeploy/{relative}" if folder == "kdeploy" else f"kdeploy/{STAGES[folder]}/{relative}")
    expected.add("kdeploy/wire/protos/descriptors.binpb")
    expected |= {f"kdeploy/wire/protos/{p.relative_to(ROOT / 'kdeploy/wire/protos').as_posix()}"
                 for p in (ROOT / "kdeploy/wire/protos").rglob("*.proto")}
    assert sorted(expected - names) == []


def test_wheel_holds_the_kubernetes_manifests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"kdeploy/k8s/{p.relative_to(ROOT / 'k8s').as_posix()}" for p in (ROOT / "k8s").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert "kdeploy/k8s/overlays/onnx/kustomization.yaml" in expected
    assert sorted(expected - names) == []


def test_render_works_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """A non-editable install renders without --k8s-dir, from a folder that holds no k8s/."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    script = ("import sys, kdeploy; from kdeploy.cli import main; print(kdeploy.__file__, file=sys.stderr); "
              "sys.exit(main(['k8s', 'render', '--overlay', 'onnx', '--image', 'example.com/kdeploy-server:1']))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(target)}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(str(target)), result.stderr
    assert "kind: Deployment" in result.stdout and "image: example.com/kdeploy-server:1" in result.stdout


def test_every_importable_data_folder_is_a_listed_package() -> None:
    """setuptools warns about (and would leave out) a folder Python could import that `packages` does not list: the
    .proto folders and the manifests' folders are listed as data packages (names with '-' are not importable)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {("kdeploy.wire.protos", ROOT / "kdeploy/wire/protos"), ("kdeploy.k8s", ROOT / "k8s")}
    missing = []
    for package, root in folders:
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            parts = folder.relative_to(root).parts
            if all(part.isidentifier() for part in parts):
                name = ".".join([package, *parts])
                if name not in listed:
                    missing.append(name)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"

"""`kdeploy k8s render`: print an overlay's Kubernetes manifests, with the image and model substituted.

The manifests are a kustomize base and overlays in `k8s/`. Rendering writes a throw-away kustomization on top of
the chosen overlay (an `images:` entry for `--image`, a small patch for `--model`) and builds it with
`kubectl kustomize`, so the output is exactly what `kubectl apply -k` would send. Nothing is applied.
Standard library only: the YAML is written as JSON, which kustomize reads as YAML.

An overlay has already renamed its image (`kdeploy-server` -> `registry.example.com/.../kdeploy-server`) by the
time the layer on top sees it, so an `--image` entry names both the placeholder and the overlay's `newName`, read
from the overlay's `images:` list (`- name: X` followed by `newName: Y`, as `kustomize edit set image` writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError

logger = logging.getLogger(__name__)

KUSTOMIZE_TIMEOUT_S = 60.0
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Docker's reference grammar, simplified: lower-case repository path (with an optional registry port), tag, digest.
_REPOSITORY = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class OverlayInfo:
    """What `--image` and `--model` change in one of the shipped overlays."""

    image: str
    """The image name the overlay's manifests use (the `name` of its kustomize `images:` entry)."""
    model_edit: str
    """How the model name is set: `server-env`, `tfserving-probes`, `loadtest-env` or `kserve-isvc`."""


OVERLAYS: dict[str, OverlayInfo] = {
    "onnx": OverlayInfo(image="kdeploy-server", model_edit="server-env"),
    "gpu": OverlayInfo(image="kdeploy-server", model_edit="server-env"),
    "tfserving": OverlayInfo(image="kdeploy-tfserving", model_edit="tfserving-probes"),
    "loadtest": OverlayInfo(image="kdeploy-loadtest", model_edit="loadtest-env"),
    "onnx-tls": OverlayInfo(image="kdeploy-server", model_edit="server-env"),
    "bucket": OverlayInfo(image="kdeploy-server", model_edit="server-env"),
    "kserve": OverlayInfo(image="kdeploy-server", model_edit="kserve-isvc"),
}


def add_k8s_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "k8s", help="Kubernetes manifests (kustomize base and overlays in k8s/)",
        description="Work with kdeploy's Kubernetes manifests: a kustomize base and one overlay per server.")
    subcommands = parser.add_subparsers(dest="k8s_command", required=True, metavar="{render}",
                                        parser_class=type(parser))
    render = subcommands.add_parser(
        "render", help="print an overlay's manifests (kubectl kustomize), image and model substituted",
        description="Print the manifests `kubectl apply -k k8s/overlays/NAME` would apply, built with `kubectl "
                    "kustomize` (found beside this Python or in PATH), with the image and model substituted.")
    render.add_argument("--overlay", required=True, metavar="NAME",
                        help=f"overlay folder under k8s/overlays ({', '.join(OVERLAYS)})")
    render.add_argument("--image", action="append", default=[], metavar="[NAME=]REF",
                        help="image reference (REGISTRY/REPO:TAG or @sha256:...) for the overlay's image, or for "
                             "the image called NAME in the manifests (repeatable)")
    render.add_argument("--model", metavar="NAME", help="model to serve, probe or load (default: as in the overlay)")
    render.add_argument("--k8s-dir", type=Path, help="the k8s/ folder (default: the one installed with kdeploy)")
    render.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> int:
    manifests = render_overlay(args.overlay, images=args.image, model=args.model, k8s_dir=args.k8s_dir)
    sys.stdout.write(manifests)
    return 0


def render_overlay(overlay: str, images: list[str] | None = None, model: str | None = None,
                   k8s_dir: Path | None = None) -> str:
    """Build one overlay with kustomize, with the given images and model substituted.

    Args:
        overlay: a folder name under `k8s/overlays`.
        images: `[NAME=]REF` entries; a bare REF replaces the overlay's own image.
        model: the model name to put where the overlay names one.
        k8s_dir: the `k8s/` folder; default the one installed with kdeploy, else `./k8s`.

    Returns:
        The manifests as multi-document YAML.

    Raises:
        UsageError: unknown overlay, malformed image or model name, no kubectl, or kustomize refusing the input.
    """
    root = find_k8s_dir(k8s_dir)
    overlay_dir = root / "overlays" / overlay
    available = sorted(p.name for p in (root / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    if overlay not in available:
        raise UsageError(f"unknown overlay {overlay!r}; choose from {', '.join(available)}")
    info = OVERLAYS.get(overlay)
    renamed = overlay_image_names((overlay_dir / "kustomization.yaml").read_text(encoding="utf-8"))
    kustomization = wrapper_kustomization(overlay, info, images or [], model, renamed)
    command = kustomize_command()
    with tempfile.TemporaryDirectory(prefix="kdeploy-k8s-") as tmp:
        # kustomize takes bases by relative path only; a path that climbs out of the temporary folder is fine.
        kustomization["resources"] = [os.path.relpath(overlay_dir.resolve(), Path(tmp).resolve())]
        (Path(tmp) / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2), encoding="utf-8")
        logger.debug("kustomization for %s: %s", overlay, kustomization)
        try:
            result = subprocess.run([*command, tmp], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_S,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise UsageError(f"{' '.join(command)} did not finish within {KUSTOMIZE_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise UsageError(f"kustomize could not build overlay {overlay!r}: {lines[-1] if lines else 'no message'}")
    return result.stdout


def find_k8s_dir(k8s_dir: Path | None) -> Path:
    """The folder holding `base/` and `overlays/`: `k8s_dir`, else the manifests installed with kdeploy."""
    candidates = [k8s_dir] if k8s_dir is not None else [packaged_k8s_dir(), Path("k8s")]
    for candidate in candidates:
        if candidate is not None and (candidate / "overlays").is_dir():
            return candidate
    where = k8s_dir if k8s_dir is not None else "installed with kdeploy or in the current folder"
    raise UsageError(f"no k8s/overlays folder {where}; pass --k8s-dir (the repository's k8s/)")


def packaged_k8s_dir() -> Path | None:
    """`k8s/` as installed: package data of `kdeploy.k8s`, in a wheel and in an editable install alike.

    kustomize reads real folders only, so a zipped install (where the resources are no files) counts as absent.
    """
    try:
        root = resources.files("kdeploy.k8s")
    except ModuleNotFoundError:
        return None
    return root if isinstance(root, Path) else None


def kustomize_command() -> list[str]:
    """`kubectl kustomize` beside this Python (a virtualenv's) or in PATH, else a standalone `kustomize build`."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), "kustomize"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    raise UsageError("kubectl not found beside Python or in PATH: install kubectl (it includes kustomize)")


_RENAME = re.compile(r"^\s*-\s*name:\s*[\"']?([^\s\"']+)[\"']?\s*\n\s*newName:\s*[\"']?([^\s\"']+)", re.MULTILINE)


def overlay_image_names(kustomization_text: str) -> dict[str, str]:
    """`{placeholder: newName}` from an overlay's `images:` entries."""
    return dict(_RENAME.findall(kustomization_text))


def wrapper_kustomization(overlay: str, info: OverlayInfo | None, images: list[str], model: str | None,
                          renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The kustomization laid over the overlay (without its `resources:`, which depend on where it is written).

    Args:
        overlay: the overlay's name.
        info: what the shipped overlay's image and model are, if it is one of them.
        images: `--image` values.
        model: `--model` value.
        renamed: `{placeholder: newName}` the overlay already applies.
    """
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    entries = []
    renamed = renamed or {}
    for spec in images:
        entry = image_entry(spec, info, overlay)
        entries.append(entry)
        if renamed.get(entry["name"]):
            entries.append({**entry, "name": renamed[entry["name"]]})
    if entries:
        kustomization["images"] = entries
    if model is not None:
        if not _MODEL_NAME.match(model):
            raise UsageError(f"--model {model!r}: a model name is letters, digits, '.', '_' and '-'")
        if info is None:
            raise UsageError(f"overlay {overlay!r} does not say where its model name goes; edit it instead of --model")
        kustomization.update(model_edit(info.model_edit, model))
    return kustomization


def image_entry(spec: str, info: OverlayInfo | None, overlay: str) -> dict[str, str]:
    """A kustomize `images:` entry from `[NAME=]REGISTRY/REPO[:TAG][@sha256:DIGEST]`."""
    name, sep, ref = spec.rpartition("=")
    if not sep:
        if info is None:
            raise UsageError(f"--image {spec!r}: overlay {overlay!r} has no default image; use NAME=REF")
        name = info.image
    ref, at, digest = ref.partition("@")
    repository, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:  # no tag; a colon before the last slash is a registry port
        repository, tag = ref, ""
    if (not name or not _REPOSITORY.match(repository) or (colon and tag and not _TAG.match(tag))
            or (at and not _DIGEST.match(digest))):
        raise UsageError(f"--image {spec!r}: expected [NAME=]REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST] "
                         "(repository in lower case)")
    entry = {"name": name, "newName": repository}
    if tag:
        entry["newTag"] = tag
    if digest:
        entry["digest"] = digest
    return entry


def model_edit(kind: str, model: str) -> dict[str, Any]:
    """The kustomization fields that make an overlay serve, probe or load `model`."""
    if kind == "server-env":
        # kdeploy serve --model NAME: serve only this model of the repository.
        return {"configMapGenerator": [{"name": "model-server", "behavior": "merge",
                                        "literals": [f"KDEPLOY_MODEL={model}"]}]}
    if kind == "loadtest-env":
        return {"configMapGenerator": [{"name": "loadtest", "behavior": "merge",
                                        "literals": [f"KDEPLOY_LOADTEST_MODEL={model}"]}]}
    if kind == "tfserving-probes":
        # TF Serving's probes ask the REST API about the model by name.
        paths = {"startupProbe": f"/v1/models/{model}/metadata", "readinessProbe": f"/v1/models/{model}/metadata",
                 "livenessProbe": f"/v1/models/{model}"}
        patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "model-server"},
                 "spec": {"template": {"spec": {"containers": [
                     {"name": "server", **{probe: {"httpGet": {"path": path}} for probe, path in paths.items()}}]}}}}
        return {"patches": [{"patch": json.dumps(patch)}]}
    if kind == "kserve-isvc":
        # KServe serves the model under the InferenceService's name (the runtimes pass --model-name={{.Name}}).
        operation = [{"op": "replace", "path": "/metadata/name", "value": model}]
        return {"patches": [{"target": {"kind": "InferenceService", "name": "digits"}, "patch": json.dumps(operation)}]}
    raise ValueError(f"unknown model edit {kind!r}")

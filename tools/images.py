"""`make images` and `make test-images`: build kdeploy's images with podman or docker, then test them for real.

    python -m tools.images build [--target T ...]   # server, loadtest, trainer (+ tfserving when its base exists)
    python -m tools.images test [PYTEST ARGS...]     # engine, base image, build, then pytest -m images tests/images

`test` installs podman (with runc and debootstrap) when no engine answers and this is root with apt-get; otherwise
it skips with one line and exit 0, because a machine without an engine cannot run the images (CI machines of
kdeploy's kind have apt). Every image bakes the demo repository (`MODEL_SOURCE=context`, build/models, made by
`kdeploy train` + `kdeploy export` when missing). Build times and sizes go to build/images/report.json, which the
tests print beside the base image's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.base_image import STAND_IN_LABEL, dockerfile_base, ensure_base
from tools.engine import BUILD, ROOT, Engine, EngineError, detect

TAG = "0.1.0"
TARGETS = ("server", "loadtest", "trainer")
MODELS = ROOT / "build" / "models"
MODEL_NAME = "digits"
REPORT = BUILD / "report.json"
APT_PACKAGES = ("podman", "runc", "debootstrap")


def image_name(target: str) -> str:
    return f"kdeploy-{target}:{TAG}"


def kdeploy_command() -> str:
    """The `kdeploy` script of the Python running this (the project's virtualenv)."""
    beside = Path(sys.executable).parent / "kdeploy"
    return str(beside) if beside.is_file() else "kdeploy"


def ensure_models() -> str:
    """The demo repository at build/models (digits, version 1), trained and exported when missing."""
    if (MODELS / MODEL_NAME / "1" / "manifest.json").is_file():
        return f"model repository {MODELS.relative_to(ROOT)}: present"
    start = time.monotonic()
    train_dir = ROOT / "build" / "images" / "train"
    subprocess.run([kdeploy_command(), "train", "--recipe", "digits-cnn", "--out", str(train_dir)], check=True)
    subprocess.run([kdeploy_command(), "export", str(train_dir / "model.keras"), "--repository", str(MODELS),
                    "--name", MODEL_NAME, "--version", "1", "--force"], check=True)
    return f"model repository {MODELS.relative_to(ROOT)}: trained and exported in {time.monotonic() - start:.0f} s"


def tfserving_base() -> str:
    """`tensorflow/serving:VERSION` as the Dockerfile's tfserving stage names it (CPU variant)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^ARG TFSERVING_VERSION=(\S+)$", text, re.MULTILINE)
    return f"tensorflow/serving:{match[1] if match else 'latest'}"


def build_target(engine: Engine, target: str) -> dict[str, float | int | str]:
    """Build one target; returns its build time and size."""
    start = time.monotonic()
    pull = ["--pull=never"] if engine.name == "podman" else []
    args = ["build", *pull, "--network", "host", *engine.build_volumes(), "--target", target,
            "--build-arg", "MODEL_SOURCE=context", "--tag", image_name(target), str(ROOT)]
    print(f"building {image_name(target)}: {engine.name} {' '.join(args)}", flush=True)
    engine.run(args, capture=False, timeout=3600)
    seconds = time.monotonic() - start
    size = engine.image_size(image_name(target))
    print(f"built {image_name(target)} in {seconds:.0f} s, {size / 1e6:.0f} MB", flush=True)
    return {"image": image_name(target), "build_seconds": round(seconds, 1), "bytes": size}


def build(engine: Engine, targets: list[str]) -> dict[str, Any]:
    """Base image, model repository, then each target; writes and returns build/images/report.json."""
    steps = [ensure_base(engine), ensure_models()]
    for line in steps:
        print(line, flush=True)
    base = dockerfile_base()
    labels = engine.run(["image", "inspect", "--format", "{{json .Config.Labels}}", base]).stdout
    report: dict[str, Any] = {
        "engine": engine.name, "base_image": base, "base_bytes": engine.image_size(base),
        "base_is_stand_in": STAND_IN_LABEL in (labels or ""), "images": {}, "skipped": {}}
    images: dict[str, object] = {}
    skipped: dict[str, str] = {}
    for target in targets:
        if target == "tfserving" and not engine.image_exists(tfserving_base()):
            skipped[target] = (f"its base {tfserving_base()} is not present locally "
                               "(pull it where a registry is reachable)")
            print(f"skipped {image_name(target)}: {skipped[target]}", flush=True)
            continue
        images[target] = build_target(engine, target)
    report.update(images=images, skipped=skipped)
    previous = json.loads(REPORT.read_text(encoding="utf-8")) if REPORT.is_file() else {}
    if previous.get("images"):  # keep what earlier runs built, e.g. `build --target server` after a full build
        report["images"] = {**previous["images"], **images}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(summary(report), flush=True)
    return report


def summary(report: dict[str, Any]) -> str:
    """The sizes and build times, one line per image, the base image first."""
    base = int(report["base_bytes"])
    kind = "a local stand-in (debootstrap)" if report["base_is_stand_in"] else "as pulled"
    lines = [f"sizes: base {report['base_image']}, {kind}: {base / 1e6:.0f} MB"]
    for entry in report["images"].values():
        lines.append(f"sizes: {entry['image']}: {entry['bytes'] / 1e6:.0f} MB ({(entry['bytes'] - base) / 1e6:.0f} MB "
                     f"above the base), built in {entry['build_seconds']:.0f} s")
    return "\n".join(lines)


def install_podman() -> str | None:
    """Install podman when none answers and apt-get can: returns why it could not (None when it did)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "no container engine (podman, or docker with a running daemon), and not root with apt-get to install one"
    print(f"installing {' '.join(APT_PACKAGES)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        if subprocess.run(command, env=env, check=False).returncode != 0:
            return f"`{' '.join(command)}` failed"
    return None


def engine_for_tests() -> Engine | None:
    """The engine, installing podman if needed and possible; None (after printing why) to skip."""
    try:
        return detect()
    except EngineError as error:
        if os.environ.get("CONTAINER_ENGINE"):
            raise
        reason = install_podman()
        if reason is None:
            return detect()
        print(f"test-images skipped: {reason} ({error})", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.images", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the images (make images)")
    build_parser.add_argument("--target", action="append", choices=[*TARGETS, "tfserving"],
                              help="targets to build (default: server, loadtest, trainer, tfserving if possible)")
    commands.add_parser("test", help="build, then run tests/images (make test-images)")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    start = time.monotonic()
    try:
        if args.command == "build":
            build(detect(), args.target or [*TARGETS, "tfserving"])
            return 0
        engine = engine_for_tests()
        if engine is None:
            return 0
        build(engine, [*TARGETS, "tfserving"])
    except (EngineError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = {**os.environ, **engine.env, "CONTAINER_ENGINE": engine.name}
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "images", "tests/images", *rest], cwd=ROOT,
                            env=env, check=False)
    print(f"test-images: {time.monotonic() - start:.0f} s in all (builds included)", flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

"""The container engine `make images` and `make test-images` drive: podman or docker, detected or chosen.

`CONTAINER_ENGINE=podman|docker` chooses; otherwise the first engine that answers `info` wins (a docker client
without a running daemon does not count). Podman gets a `containers.conf` of kdeploy's own unless the caller set
`CONTAINERS_CONF`: on the small VMs kdeploy is built on, crun fails with cgroups v1 "hybrid" and runc cannot raise
podman's default rlimits, so it names runc, cgroupfs and capped ulimits (see docs/troubleshooting.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "images"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ENGINES = ("podman", "docker")
PODMAN_CONF = """\
# Written by tools/engine.py for kdeploy's image builds and tests; CONTAINERS_CONF=FILE overrides it.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "{runtime}"
"""


class EngineError(Exception):
    """No usable container engine; the message says why in one line."""


@dataclass(frozen=True)
class Engine:
    """A container engine command and the environment it runs with."""

    name: str
    """`podman` or `docker`."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the caller's environment (podman's CONTAINERS_CONF)."""

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float | None = 600,
            capture: bool = True, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run `ENGINE ARGS...`; with `check`, a non-zero exit raises EngineError with the engine's last line."""
        result = subprocess.run([self.name, *args], env={**os.environ, **self.env}, capture_output=capture,
                                text=input_bytes is None, input=input_bytes, timeout=timeout, check=False)
        if check and result.returncode != 0:
            stderr = result.stderr if isinstance(result.stderr, str) else (result.stderr or b"").decode()
            lines = [line for line in (stderr or "").splitlines() if line.strip()]
            raise EngineError(f"{self.name} {' '.join(args[:3])}... exited {result.returncode}: "
                              f"{lines[-1] if lines else 'no message'}")
        return result

    def remove_container(self, name: str) -> None:
        """Remove a container at once, running or not, and say nothing if it is gone already."""
        force = ["rm", "--force", "--time", "0"] if self.name == "podman" else ["rm", "--force"]
        self.run([*force, name], check=False, timeout=120)

    def image_exists(self, reference: str) -> bool:
        return self.run(["image", "inspect", reference], check=False).returncode == 0

    def image_size(self, reference: str) -> int:
        """The image's size in bytes, as the engine reports it (all layers, uncompressed)."""
        return int(self.run(["image", "inspect", "--format", "{{.Size}}", reference]).stdout.strip())

    def build_volumes(self) -> list[str]:
        """Build-time mounts: the host's CA bundle, for pip behind a TLS-re-signing proxy (podman only: docker
        build has no volumes). Mounted, never copied, so it is in no layer."""
        if self.name == "podman" and CA_BUNDLE.is_file():
            return ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        return []


def podman_env() -> dict[str, str]:
    """CONTAINERS_CONF for podman: the caller's, or kdeploy's file for machines like the development VMs."""
    if os.environ.get("CONTAINERS_CONF"):
        return {}
    runtime = "runc" if shutil.which("runc") else "crun"
    conf = BUILD / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    text = PODMAN_CONF.format(runtime=runtime)
    if not conf.is_file() or conf.read_text(encoding="utf-8") != text:
        conf.write_text(text, encoding="utf-8")
    return {"CONTAINERS_CONF": str(conf)}


def answers(engine: Engine) -> bool:
    """Whether the engine works, not only whether its client is installed."""
    if not shutil.which(engine.name):
        return False
    try:
        return engine.run(["info"], check=False, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def make_engine(name: str) -> Engine:
    # docker: BuildKit for the Dockerfile's cache mounts (Debian's docker.io 20.10 still defaults to the old builder).
    return Engine(name, podman_env() if name == "podman" else {"DOCKER_BUILDKIT": "1"})


def detect(choice: str | None = None) -> Engine:
    """The engine to use: `choice` (or CONTAINER_ENGINE) if given, else the first of podman, docker that works.

    Raises:
        EngineError: the chosen engine is unknown or does not answer, or none does.
    """
    choice = choice if choice is not None else os.environ.get("CONTAINER_ENGINE", "")
    if choice:
        if choice not in ENGINES:
            raise EngineError(f"CONTAINER_ENGINE={choice!r}: choose podman or docker")
        engine = make_engine(choice)
        if not answers(engine):
            raise EngineError(f"CONTAINER_ENGINE={choice} does not answer `{choice} info`: install or start it")
        return engine
    for name in ENGINES:
        engine = make_engine(name)
        if answers(engine):
            return engine
    raise EngineError("no container engine answers (podman, or docker with a running daemon)")

"""A local stand-in for the Dockerfile's Python base image, for machines that reach no image registry.

The Dockerfile starts from `python:3.11.14-slim-bookworm`. Where that image cannot be pulled, this builds an image
under the same name from Debian bookworm's own packages with debootstrap: Debian's Python 3.11 (3.11.2, in
/usr/bin, linked into /usr/local/bin where the official image keeps its Python), `venv` and `pip`, and the CA
certificates. It is a stand-in, not the real base: about 199 MB against the real slim image's 125 MB (so image
sizes measured on it are upper bounds), a different patch release of Python, and Debian's externally-managed marker
removed so that pip behaves as in the official image. The image carries a label saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from tools.engine import BUILD, ROOT, Engine, EngineError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
STAND_IN_LABEL = "org.kdeploy.base-image"
_FROM = re.compile(r"^ARG PYTHON_IMAGE=(\S+)$", re.MULTILINE)


def dockerfile_base() -> str:
    """The base image the Dockerfile names (`ARG PYTHON_IMAGE=...`)."""
    match = _FROM.search((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    if not match:
        raise EngineError("Dockerfile has no `ARG PYTHON_IMAGE=...` line")
    return match[1]


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+/debian)/?\s", text, re.MULTILINE):
            return match[1]
    return DEFAULT_MIRROR


def ensure_base(engine: Engine, reference: str | None = None) -> str:
    """Make the stand-in base image unless an image of that name exists (pulled or made before).

    Returns:
        What was done, as one line for the log.
    """
    reference = reference or dockerfile_base()
    if engine.image_exists(reference):
        return f"base image {reference}: present"
    if not shutil.which("debootstrap"):
        raise EngineError(f"base image {reference} is missing and debootstrap is not installed (apt-get install "
                          "debootstrap), or pull the real image")
    start = time.monotonic()
    rootfs = BUILD / "base-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(rootfs),
                             mirror], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if line.strip()]
        raise EngineError(f"debootstrap from {mirror} failed: {lines[-1] if lines else 'no message'}")
    customise(rootfs)
    tar = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], capture_output=True,
                         timeout=300, check=True).stdout
    changes = ["ENV LANG=C.UTF-8", 'CMD ["python3"]',
               f'LABEL {STAND_IN_LABEL}="stand-in for {reference}: Debian bookworm python3 via debootstrap"']
    engine.run(["import", *[arg for change in changes for arg in ("--change", change)], "-", reference],
               input_bytes=tar)
    shutil.rmtree(rootfs, ignore_errors=True)
    return f"base image {reference}: stand-in built with debootstrap from {mirror} in {time.monotonic() - start:.0f} s"


def customise(rootfs: Path) -> None:
    """Make the Debian root file system look like the official image where the Dockerfile relies on it."""
    local_bin = rootfs / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name, target in (("python", "python3"), ("python3", "python3"), ("pip", "pip3"), ("pip3", "pip3")):
        link = local_bin / name
        if not link.exists():
            link.symlink_to(f"/usr/bin/{target}")
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # What the official slim image does not carry either: apt's lists and caches, docs.
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name != "lock":
                path.unlink(missing_ok=True)

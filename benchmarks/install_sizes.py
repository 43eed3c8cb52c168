"""Size on disk of each install role: what `pip install 'kdeploy[ROLE]'` resolves to, measured on this venv's copies.

For each extra, `pip install --dry-run --report` (with constraints.txt, from the package index) lists the
distributions it would install; their installed files are summed from this venv's metadata (`make install` put all
of them here). Prints a Markdown table. Not a test: nothing asserts a size.

Run: `.venv/bin/python benchmarks/install_sizes.py` (about a minute; needs the package index).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("base", "serve", "loadtest", "export", "all")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolved(role: str) -> list[str]:
    """The distributions `pip install .[role]` would install into an empty environment."""
    target = str(ROOT) if role == "base" else f"{ROOT}[{role}]"
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--no-build-isolation", "-c", str(ROOT / "constraints.txt"), "--report", str(report), target],
                       check=True, capture_output=True, text=True, timeout=600)
        return [normal(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]]


def installed_bytes(name: str) -> int:
    if name == "kdeploy":
        return sum(p.stat().st_size for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts)
    dist = metadata.distribution(name)
    return sum((Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
                if Path(dist.locate_file(f)).is_file()), 0)


def main() -> None:
    print("| role | install | distributions | size on disk |")
    print("|---|---|---|---|")
    for role in ROLES:
        names = resolved(role)
        size = sum(installed_bytes(n) for n in names)
        spec = "kdeploy" if role == "base" else f"kdeploy[{role}]"
        print(f"| {role} | `pip install '{spec}'` | {len(names)} | {size / 2**20:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

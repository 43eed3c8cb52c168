"""Versions of Python and installed libraries, recorded in metrics and manifests."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Python's version and each installed distribution's among `names` (missing ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions

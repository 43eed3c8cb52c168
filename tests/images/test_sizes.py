"""Every built image's size, reported beside its base's; the server stays under 400 MB on the real slim base."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.images

SERVER_LIMIT_BYTES = 400 * 10**6
REAL_SLIM_BASE_BYTES = 125 * 10**6
"""python:3.11-slim-bookworm as pulled (about 125 MB); the debootstrap stand-in is larger (about 185 MB)."""


def test_sizes_are_reported_and_the_server_fits(engine, build_report, image):
    base = build_report["base_bytes"]
    kind = "stand-in (debootstrap)" if build_report["base_is_stand_in"] else "as pulled"
    lines = [f"base {build_report['base_image']} {kind}: {base / 1e6:.0f} MB"]
    for target, entry in sorted(build_report["images"].items()):
        size = engine.image_size(image(target))  # the image as it is now, not only as the report says
        lines.append(f"{entry['image']}: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB above the base), "
                     f"built in {entry['build_seconds']:.0f} s")
    for target, reason in build_report.get("skipped", {}).items():
        lines.append(f"kdeploy-{target}: not built ({reason})")
    print("\n" + "\n".join(lines))
    server = engine.image_size(image("server"))
    # On the stand-in, count the server's own layers on top of the real slim base's size.
    on_real_base = server - base + REAL_SLIM_BASE_BYTES if build_report["base_is_stand_in"] else server
    assert on_real_base < SERVER_LIMIT_BYTES, "\n".join(lines)

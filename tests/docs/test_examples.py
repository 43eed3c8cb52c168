"""The README's and the docs' examples, run: every `bash` and `python` block, page by page, as a reader would.

Each page runs as one shell session in a fresh folder holding the demo's `build/demo/train` and `build/demo/models`
(what `make demo` leaves), with the venv's `kdeploy` and `python` first on PATH and the default ports moved to free
ones. Servers a page starts in the background are stopped with the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import ROOT, blocks, pages, session_script

RUNNABLE_PAGES = [page for page in pages() if any(block.runs for block in blocks(page))]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory, digits_trained, exported_repo) -> Path:
    """`build/demo/train` and `build/demo/models/digits/1`, as `make demo` leaves them."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(digits_trained.model_path.parent, root / "build" / "demo" / "train")
    shutil.copytree(exported_repo / "digits", root / "build" / "demo" / "models" / "digits")
    return root


def test_every_page_with_examples_is_collected():
    """The tour, the README and the serving page have runnable examples (a parser that found none would pass)."""
    names = {page.relative_to(ROOT).as_posix() for page in RUNNABLE_PAGES}
    assert {"README.md", "docs/tour.md", "docs/serve/index.md", "docs/loadtest.md"} <= names


def test_skipped_blocks_say_why():
    unexplained = [block.where for page in pages() for block in blocks(page) if block.skip_reason == ""]
    assert not unexplained, f"'# docs: skip' needs a reason in parentheses: {unexplained}"


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples_run(page: Path, demo_folder: Path, tmp_path: Path):
    work = tmp_path / "work"
    shutil.copytree(demo_folder, work)
    grpc, rest, metrics = free_ports(3)
    script = work / "examples.sh"
    script.write_text(session_script(blocks(page), {"grpc": grpc, "rest": rest, "metrics": metrics}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KDEPLOY_GRPC_PORT": str(grpc), "KDEPLOY_REST_PORT": str(rest), "KDEPLOY_METRICS_PORT": str(metrics),
           "KDEPLOY_DRAIN_GRACE_SECONDS": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "ORT_DISABLE_TELEMETRY": "1",
           "MPLBACKEND": "Agg"}
    log = tmp_path / "examples.log"
    with log.open("w") as out:
        # A session of its own: every server a page left running is stopped with it below.
        process = subprocess.Popen(["bash", str(script)], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log.read_text()
    failed_in = [line for line in output.splitlines() if line.startswith(">>> docs block ")][-1:]
    assert code == 0, (f"{page.relative_to(ROOT)}: examples exited {code} in {failed_in}; last output:\n"
                       + "\n".join(output.splitlines()[-40:]))

"""The docs site: generated pages current, every flag, metric and error documented, the site building strictly."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import ROOT, pages
from tools import docs


def _long_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                flags |= _long_flags(sub)
        flags |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
    return flags


def test_generated_pages_are_current():
    stale = [str(path.relative_to(ROOT)) for path, text in docs.expected_files().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"generated docs differ from the code: {stale}; run `make docs` and commit the result"


def test_every_flag_and_command_has_an_entry():
    from kdeploy.cli import build_parser

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    first_cells = re.findall(r"^\| `([^`]+)`", page, re.M)
    documented = {flag for text in first_cells for flag in re.findall(r"--[\w-]+", text)}
    missing = _long_flags(build_parser()) - documented
    assert not missing, f"flags without an entry in docs/reference/cli.md: {sorted(missing)}"
    for command in ("train", "export", "verify", "serve", "configs", "demo", "loadtest", "loadtest compare",
                    "k8s", "k8s render"):
        assert f"`kdeploy {command}`" in page


def test_serve_flags_name_their_environment_variable():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    serve = page.split("## `kdeploy serve`", 1)[1].split("\n## ", 1)[0]
    assert "| `--grpc-port GRPC_PORT` | `8500` | `KDEPLOY_GRPC_PORT` |" in serve
    assert "`KDEPLOY_ENABLE_BATCHING`" in serve


def test_every_metric_has_an_entry():
    from kdeploy.serve.metrics import ServerMetrics

    page = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    metrics = ServerMetrics()
    names = {family.name for family in metrics.registry.collect()}
    metrics.close()
    assert len(names) >= 8
    missing = [name for name in names if not re.search(rf"`{name}(_total)?`", page)]
    assert not missing, f"metrics without an entry in docs/reference/metrics.md: {missing}"


def test_every_error_kind_has_a_row():
    from kdeploy.serve.errors import GRPC_STATUS
    from kdeploy.wire.errors import ErrorKind

    page = (ROOT / "docs" / "reference" / "errors.md").read_text()
    for kind in ErrorKind:
        assert f"`{GRPC_STATUS[kind].name}`" in page, kind


def test_benchmark_tables_come_from_the_records(tmp_path: Path):
    """A table rendered from a changed record differs: the page really is written from the JSON."""
    import json

    record = json.loads((docs.RESULTS / "foundation.json").read_text())
    record["rows"][0]["epochs"] = 12345
    (tmp_path / "foundation.json").write_text(json.dumps(record))
    (tmp_path / "serving.json").write_text((docs.RESULTS / "serving.json").read_text())
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "| 12345 |" in docs.fill_tables(page, tmp_path)
    assert "| 12345 |" not in page


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_lists_start_after_a_blank_line(page: Path):
    """Python-Markdown (the site) renders a list that follows a paragraph line as part of the paragraph."""
    item = re.compile(r"^\s{0,3}([-*]|\d+\.) \S")
    lines, fence = page.read_text().splitlines(), False
    for number, line in enumerate(lines[1:], start=2):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        previous = lines[number - 2]
        if (not fence and item.match(line) and previous.strip() and not item.match(previous)
                and not previous.startswith((" ", "\t", "```"))):
            pytest.fail(f"{page.relative_to(ROOT)}:{number}: a list item right after a paragraph line; "
                        "add a blank line before the list")


def test_site_builds_in_strict_mode(tmp_path: Path):
    """Broken links, missing anchors and pages left out of the navigation fail the build (mkdocs.yml)."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli.html").exists()

"""The fenced code blocks of the README and the docs pages, and the shell script that runs a page's blocks.

A page's `bash` and `python` blocks are what a reader copies: they run in order, as one terminal session. A block
whose first line is `# docs: skip (REASON)` is not run; `text` blocks (synopses, sample output) never are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = ("bash", "python")
SKIP = re.compile(r"#\s*docs:\s*skip\b\s*(?P<reason>\(.+\))?")
_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
DEFAULT_PORTS = {"8500": "grpc", "8501": "rest", "8502": "metrics"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        """`None` for a block to run; the reason (or "" when none is given) for a skipped one."""
        first = self.code.lstrip().split("\n", 1)[0]
        match = SKIP.match(first)
        if not match:
            return None
        return (match["reason"] or "").strip("()")

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.skip_reason is None


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """Top-level fenced blocks of one Markdown file, with the line their code starts on."""
    found, fence, lang, start, code = [], None, "", 0, []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, lang, start, code = match["fence"], match["lang"], number + 1, []
        elif line.strip() == fence:
            found.append(Block(page, start, lang, "\n".join(code) + "\n"))
            fence = None
        else:
            code.append(line)
    return found


def session_script(page_blocks: list[Block], ports: dict[str, int]) -> str:
    """One bash script running a page's blocks in order; each announces itself, so a failure names its block.

    The default ports 8500-8502 in the text become `ports` (free ones), so a page can run beside other servers.
    """
    parts = ["set -euo pipefail"]
    for block in page_blocks:
        if not block.runs:
            continue
        parts.append(f"echo '>>> docs block {block.where}' >&2")
        if block.lang == "python":
            parts.append(f"python - <<'KDEPLOY_DOCS_PYTHON'\n{block.code}KDEPLOY_DOCS_PYTHON")
        else:
            parts.append(block.code)
    script = "\n".join(parts) + "\n"
    return re.sub(r"\b(850[0-2])\b", lambda m: str(ports[DEFAULT_PORTS[m[1]]]), script)

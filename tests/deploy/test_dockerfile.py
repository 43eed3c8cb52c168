"""The Dockerfile: hadolint-clean, pinned bases, the targets and their entrypoints, a context that holds no secret."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import K8S, REPO, tool

TARGETS = ("trainer", "server", "server-gpu", "tfserving", "loadtest")


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"stage {self.name} has no {keyword}"
        return values[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name (continuation lines joined, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, value = line.strip().partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            image, _, name = value.partition(" AS ")
            current = stages.setdefault(name.strip(), Stage(image=image.strip(), name=name.strip()))
        elif current is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM, found {keyword}"
            arg, _, default = value.partition("=")
            global_args[arg] = default.strip('"')
        else:
            current.instructions.append((keyword, value))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_hadolint_is_clean():
    result = subprocess.run([tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path):
    # Same config, one bad line added: the lint can fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text((REPO / "Dockerfile").read_text() + "\nFROM runtime AS extra\nRUN pip install requests\n")
    result = subprocess.run([tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3013" in result.stdout


def test_every_base_image_is_pinned_to_a_version(dockerfile):
    # hadolint does not expand ARGs in FROM; this does.
    global_args, stages = dockerfile
    for stage in stages.values():
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], stage.image)
        if image == "scratch" or image in stages or image.startswith("models-"):
            continue
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d", tag) and "latest" not in tag, f"{stage.name}: FROM {image} is not pinned"


def test_targets_run_as_a_non_root_user_under_tini(dockerfile):
    _, stages = dockerfile
    for target in TARGETS:
        stage = stages[target]
        user = stage.last("USER") if stage.all("USER") else stages[stage.image].last("USER")
        uid = user.split(":")[0]
        # Numeric, so the kubelet can check runAsNonRoot against the image.
        assert uid.isdigit() and int(uid) != 0, f"{target}: USER {user}"
        entrypoint = json.loads(stage.last("ENTRYPOINT")) if stage.all("ENTRYPOINT") else ["tini", "--"]
        assert entrypoint[:2] == ["tini", "--"], f"{target}: ENTRYPOINT {entrypoint} (exec form, tini first)"


def test_server_image_serves_the_ports_and_settings_the_manifests_expect(dockerfile):
    _, stages = dockerfile
    server = stages["server"]
    assert json.loads(server.last("ENTRYPOINT")) == ["tini", "--", "kdeploy", "serve"]
    assert server.last("STOPSIGNAL") == "SIGTERM"
    assert set(" ".join(server.all("EXPOSE")).split()) == {"8500", "8501", "8502"}
    env = dict(re.findall(r"(KDEPLOY_\w+)=(\S+)", " ".join(server.all("ENV"))))
    settings = dict(line.split("=", 1) for line in (K8S / "base" / "server.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert env and all(settings[key] == value for key, value in env.items() if key in settings), env
    # The slim server: kdeploy's serve extra (no TensorFlow), pinned by requirements/server.txt; likewise loadtest.
    build = " ".join(stages["server-build"].all("RUN"))
    assert "-c requirements/server.txt '.[serve]'" in build and "pip check" in build
    assert "-c requirements/loadtest.txt '.[loadtest]'" in " ".join(stages["loadtest-build"].all("RUN"))
    assert "-c constraints.txt '.[all]'" in " ".join(stages["trainer"].all("RUN"))


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
        table = {"**": ".*", "**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(table.get(p, re.escape(p)) for p in parts) + "$")

    excluded = False
    candidates = [path] + [str(parent) for parent in Path(path).parents if str(parent) != "."]
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.removeprefix("!"))
        if any(compiled.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_everything_the_dockerfile_copies_is_in_the_context(dockerfile, ignore_patterns):
    global_args, stages = dockerfile
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = copy.split()
            for raw_source in sources:
                source = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], "build/models"), raw_source).rstrip("/")
                assert not dockerignore_excludes(source, ignore_patterns), f"COPY {source}: excluded by .dockerignore"
                if source != "build/models":  # made by `kdeploy export` before a MODEL_SOURCE=context build
                    assert (REPO / source).exists(), f"COPY {source}: not in the repository"


@pytest.mark.parametrize("path", [
    ".git/config", ".venv/bin/python", "tests/conftest.py", "build/demo/train/model.keras", ".env", "kdeploy/.env",
    "serve/__pycache__/cli.cpython-311.pyc", "secrets/key.pem", "build/models/digits/.staging-1/model.onnx",
    ".pytest_cache/v/cache"])
def test_context_leaves_out_secrets_caches_and_build_output(path, ignore_patterns):
    assert dockerignore_excludes(path, ignore_patterns)


@pytest.mark.parametrize("path", ["kdeploy/cli.py", "serve/protos/descriptors.binpb", "requirements/server.txt",
                                  "build/models/digits/1/model.onnx", "pyproject.toml"])
def test_context_keeps_the_sources(path, ignore_patterns):
    assert not dockerignore_excludes(path, ignore_patterns)

"""`make images` / `make test-images` tooling without an engine: detection, the skip line, the base image's name."""

from __future__ import annotations

import pytest

from tools import base_image, engine, images


def test_a_docker_client_without_a_daemon_is_no_engine(monkeypatch):
    monkeypatch.delenv("CONTAINER_ENGINE", raising=False)
    monkeypatch.setattr(engine, "answers", lambda e: False)
    with pytest.raises(engine.EngineError, match="no container engine answers"):
        engine.detect()


def test_an_unknown_engine_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("CONTAINER_ENGINE", "rkt")
    with pytest.raises(engine.EngineError, match="choose podman or docker"):
        engine.detect()


def test_without_engine_or_root_the_tests_skip_with_one_line(monkeypatch, capsys):
    monkeypatch.delenv("CONTAINER_ENGINE", raising=False)
    monkeypatch.setattr(engine, "answers", lambda e: False)
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    assert images.main(["test"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("test-images skipped: no container engine"), out


def test_the_stand_in_base_has_the_dockerfiles_name():
    assert base_image.dockerfile_base() == "python:3.11.14-slim-bookworm"


@pytest.mark.parametrize("text", ["Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n",
                                  "deb [arch=amd64] http://mirror.example/debian bookworm main\n"])
def test_the_mirror_comes_from_apts_sources(tmp_path, monkeypatch, text):
    sources = tmp_path / "debian.sources"
    sources.write_text(text)
    real_path = base_image.Path

    def fake_path(name: str):
        return {"/etc/apt/sources.list": tmp_path / "none", "/etc/apt/sources.list.d": tmp_path}.get(name) \
            or real_path(name)
    monkeypatch.setattr(base_image, "Path", fake_path)
    assert base_image.apt_mirror() == "http://mirror.example/debian"

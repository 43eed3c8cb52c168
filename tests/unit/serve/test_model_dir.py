"""`kdeploy serve --model-dir`: a version folder, a model folder or a repository, as KServe's storage leaves it."""

from __future__ import annotations

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import VersionPolicy
from kdeploy.serve.model_dir import layout_of, sources_from_model_dir
from kdeploy.serve.models import ModelManager
from tests.unit.serve.fakes import FakeLoader, write_version


def serve(sources) -> dict[str, list[int]]:
    """What a model manager loads from the sources: model -> versions."""
    models = ModelManager(sources, "onnx", FakeLoader())
    models.load_all()
    try:
        return {name: [s.version for s in models.statuses(name)] for name in models.model_names}
    finally:
        models.close()


def test_a_version_folder_is_the_one_version_of_the_named_model(tmp_path):
    folder = write_version(tmp_path / "repo", "digits", 3)
    assert layout_of(folder) == "version"
    assert serve(sources_from_model_dir(folder, "isvc", VersionPolicy())) == {"isvc": [3]}  # the manifest's version
    assert serve(sources_from_model_dir(folder, None, VersionPolicy())) == {"digits": [3]}


def test_a_single_artifact_without_manifest_is_version_1(tmp_path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "model.onnx").write_bytes(b"onnx")
    [source] = sources_from_model_dir(tmp_path / "mnt", "m", VersionPolicy())
    assert source.name == "m" and (source.base_path / "1" / "model.onnx").is_file()


def test_a_model_folder_keeps_its_versions_and_policy(tmp_path):
    for version in (1, 2):
        write_version(tmp_path / "repo", "digits", version)
    folder = tmp_path / "repo" / "digits"
    assert layout_of(folder) == "model"
    assert serve(sources_from_model_dir(folder, "isvc", VersionPolicy.parse("all"))) == {"isvc": [1, 2]}
    assert serve(sources_from_model_dir(folder, None, VersionPolicy())) == {"digits": [2]}


def test_a_repository_of_one_model_takes_the_name_and_of_several_keeps_theirs(tmp_path):
    write_version(tmp_path / "repo", "digits", 1)
    assert layout_of(tmp_path / "repo") == "repository"
    assert serve(sources_from_model_dir(tmp_path / "repo", "isvc", VersionPolicy())) == {"isvc": [1]}
    write_version(tmp_path / "repo", "tabular", 1)
    assert serve(sources_from_model_dir(tmp_path / "repo", "isvc", VersionPolicy())) == {"digits": [1], "tabular": [1]}


def test_a_folder_without_a_model_is_a_usage_error(tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no model"):
        sources_from_model_dir(tmp_path / "empty", "m", VersionPolicy())
    with pytest.raises(UsageError, match="is not a directory"):
        sources_from_model_dir(tmp_path / "missing", "m", VersionPolicy())


def test_cli_model_dir_and_model_name(tmp_path, kdeploy):
    from kdeploy.cli import build_parser
    from kdeploy.serve.cli import config_from_args

    write_version(tmp_path / "repo", "digits", 1)
    args = build_parser().parse_args(["serve", "--model-dir", str(tmp_path / "repo" / "digits"), "--model-name", "x"])
    assert [m.name for m in config_from_args(args).models] == ["x"]
    result = kdeploy("serve", "--repository", tmp_path / "repo", "--model-name", "x")
    assert result.code == 2 and "--model-name goes with --model-dir" in result.err

"""Bad input: one line on standard error naming the problem, exit status 2, no traceback."""

import pytest


def _one_clear_line(result, *needles):
    assert result.code == 2, (result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_model_file(tmp_path, kdeploy):
    _one_clear_line(kdeploy("export", tmp_path / "nope.keras", "--repository", tmp_path, "--name", "m"),
                    "model file not found", "nope.keras")


def test_file_that_is_not_a_keras_model(tmp_path, kdeploy):
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip")
    _one_clear_line(kdeploy("export", junk, "--repository", tmp_path / "r", "--name", "m"), "is not a Keras model")


def test_unknown_recipe(tmp_path, kdeploy):
    _one_clear_line(kdeploy("train", "--recipe", "resnet", "--out", tmp_path), "unknown recipe 'resnet'", "digits-cnn")


def test_unknown_format(tmp_path, kdeploy):
    _one_clear_line(kdeploy("export", tmp_path / "m.keras", "--repository", tmp_path, "--name", "m",
                            "--formats", "onnx,coreml"), "unknown format 'coreml'")


def test_repository_path_that_is_a_file(tmp_path, kdeploy, tabular_trained):
    (tmp_path / "repo").write_text("")
    _one_clear_line(kdeploy("export", tabular_trained.model_path, "--repository", tmp_path / "repo", "--name", "m"),
                    "is a file")


@pytest.mark.slow
def test_existing_version_without_force(exported_repo, kdeploy, tabular_trained):
    _one_clear_line(kdeploy("export", tabular_trained.model_path, "--repository", exported_repo, "--name", "tabular",
                            "--version", "1"), "already exists", "--force")


def test_unknown_flag_and_bad_values(tmp_path, kdeploy):
    _one_clear_line(kdeploy("train", "--recipe", "digits-cnn", "--out", tmp_path, "--bogus"), "unrecognized arguments")
    _one_clear_line(kdeploy("train", "--recipe", "digits-cnn", "--out", tmp_path, "--val-split", "1.5"), "--val-split")
    _one_clear_line(kdeploy("verify", tmp_path / "nothing"), "does not exist")
    _one_clear_line(kdeploy("verify", tmp_path, "--atol", "coreml=1"), "unknown format 'coreml'")

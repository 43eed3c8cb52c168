import json

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import (
    Manifest,
    ManifestError,
    checksum_problems,
    describe_artifact,
    read_manifest,
    write_manifest,
)
from kdeploy.contract.repository import ModelRepository, resolve_version_dir, version_folders
from kdeploy.contract.signature import ModelSignature, SignatureError, TensorSpec

SIG = ModelSignature(inputs=(TensorSpec("x", "float32", (None, 2)),), outputs=(TensorSpec("y", "float32", (None, 1)),))


def _version(tmp_path, name="m", version=1):
    folder = tmp_path / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"keras bytes")
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.index").write_bytes(b"index")
    manifest = Manifest(
        name=name, version=version, signature=SIG, source=describe_artifact(folder, "keras"),
        artifacts={f: describe_artifact(folder, f) for f in ("savedmodel", "onnx")},
    )
    write_manifest(folder, manifest)
    return folder, manifest


def test_manifest_round_trip_and_checksums(tmp_path):
    folder, manifest = _version(tmp_path)
    assert read_manifest(folder) == manifest
    assert checksum_problems(folder, manifest) == []
    data = json.loads((folder / "manifest.json").read_text())
    assert data["signature"]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [-1, 2]}
    assert data["formats"]["onnx"]["bytes"] == len(b"onnx bytes")


def test_several_signatures_and_no_source_round_trip(tmp_path):
    classify = ModelSignature(inputs=(TensorSpec("inputs", "string", (None,)),),
                              outputs=(TensorSpec("scores", "float32", (None, 3)),), name="classify_x",
                              method="classify")
    manifest = Manifest(name="m", version=1, signature=SIG, source=None, artifacts={},
                        other_signatures=(classify,))
    write_manifest(tmp_path, manifest)
    again = read_manifest(tmp_path)
    assert again == manifest and again.discovered
    assert again.signature_named("") == SIG
    assert again.signature_named("serving_default") == SIG
    assert again.signature_named("classify_x").method == "classify"
    with pytest.raises(SignatureError, match=r"unknown signature 'nope'.*classify_x"):
        again.signature_named("nope")
    with pytest.raises(SignatureError, match="method 'guess'"):
        ModelSignature(inputs=SIG.inputs, outputs=SIG.outputs, method="guess")


def test_changed_files_are_named(tmp_path):
    folder, manifest = _version(tmp_path)
    (folder / "model.onnx").write_bytes(b"tampered")
    (folder / "variables" / "variables.index").write_bytes(b"other")
    problems = checksum_problems(folder, manifest)
    assert any(p.startswith("onnx:") for p in problems) and any(p.startswith("savedmodel:") for p in problems)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ManifestError, match="schema version 99"):
        read_manifest(tmp_path)


def test_versions_ignore_hidden_and_non_numeric_folders(tmp_path):
    for name in ("1", "3", ".staging-4-abc", "notes", "0"):
        (tmp_path / "m" / name).mkdir(parents=True)
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [1, 3]
    assert repo.next_version("m") == 4 and repo.next_version("other") == 1


def test_version_folders_are_any_all_digit_name_read_as_a_number_as_tf_serving_reads_them(tmp_path):
    model = tmp_path / "m"
    for name in ("00000123", "7", "0000", "12a", ".staging-200-x"):
        (model / name).mkdir(parents=True)
    (model / "300").write_text("a file, not a version")
    assert version_folders(model) == {7: model / "7", 123: model / "00000123"}
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [7, 123] and repo.latest_version("m") == 123 and repo.next_version("m") == 124
    assert repo.version_dir("m", 123) == model / "00000123"  # the folder's own name, not "123"
    assert repo.version_dir("m", 124) == model / "124"  # a new version gets the plain number
    assert resolve_version_dir(model) == model / "00000123" and resolve_version_dir(model, 7) == model / "7"
    (model / "0123").mkdir()  # two names for one version: the one that sorts last wins, as TF Serving keeps one
    assert version_folders(model)[123] == model / "0123"
    with repo.staging("m", 123) as stage:  # --force replaces version 123 in the folder that holds it
        (stage / "f").write_text("new")
        repo.publish(stage, "m", 123, force=True)
    assert (model / "0123" / "f").read_text() == "new"


def test_staging_leaves_nothing_when_the_build_fails(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(RuntimeError), repo.staging("m", 1) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        raise RuntimeError("converter crashed")
    assert list((tmp_path / "m").iterdir()) == []


def test_publish_refuses_to_overwrite_without_force(tmp_path):
    repo = ModelRepository(tmp_path)
    for content, force in ((b"first", False), (b"second", True)):
        with repo.staging("m", 1) as stage:
            (stage / "f").write_bytes(content)
            repo.publish(stage, "m", 1, force=force)
    assert (tmp_path / "m" / "1" / "f").read_bytes() == b"second"
    with repo.staging("m", 1) as stage, pytest.raises(UsageError, match=r"already exists.*--force"):
        repo.publish(stage, "m", 1)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_repository_that_is_a_file_and_bad_names_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        ModelRepository(tmp_path / "file")
    with pytest.raises(UsageError, match="not valid"):
        ModelRepository(tmp_path).model_dir("../escape")


def test_resolve_version_dir(tmp_path):
    _version(tmp_path, version=1)
    two, _ = _version(tmp_path, version=2)
    assert resolve_version_dir(tmp_path / "m") == two
    assert resolve_version_dir(tmp_path / "m", 1) == tmp_path / "m" / "1"
    assert resolve_version_dir(two) == two
    with pytest.raises(UsageError, match="no version 7"):
        resolve_version_dir(tmp_path / "m", 7)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_version_dir(tmp_path / "missing")
    bare = tmp_path / "tfs" / "123"  # a TF Serving version folder: saved_model.pb, no manifest
    bare.mkdir(parents=True)
    (bare / "saved_model.pb").write_bytes(b"pb")
    assert resolve_version_dir(bare) == bare and resolve_version_dir(tmp_path / "tfs") == bare


def test_published_versions_and_atomic_files_are_readable_by_others(tmp_path):
    import os
    import stat

    from kdeploy.common.files import write_text_atomic

    old = os.umask(0o022)
    try:
        repo = ModelRepository(tmp_path)
        with repo.staging("m", 1) as stage:
            write_text_atomic(stage / "manifest.json", "{}")
            published = repo.publish(stage, "m", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(published.stat().st_mode) == 0o755
    assert stat.S_IMODE((published / "manifest.json").stat().st_mode) == 0o644

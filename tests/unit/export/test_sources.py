"""Telling the kinds of model `kdeploy export` takes apart, before anything is loaded (no TensorFlow)."""

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.export.sources import source_kind


def test_kinds_by_folder_extension_and_content(tmp_path):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert source_kind(tmp_path / "sm") == "savedmodel"
    (tmp_path / "m.keras").write_bytes(b"PK")
    assert source_kind(tmp_path / "m.keras") == "keras"
    (tmp_path / "m.H5").write_bytes(b"anything")
    assert source_kind(tmp_path / "m.H5") == "h5"
    # HDF5 by its signature whatever the name, also after a 512-byte user block.
    (tmp_path / "model").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(8))
    (tmp_path / "model.bin").write_bytes(bytes(512) + b"\x89HDF\r\n\x1a\n")
    assert source_kind(tmp_path / "model") == source_kind(tmp_path / "model.bin") == "h5"


def test_folders_and_paths_that_are_no_model(tmp_path):
    with pytest.raises(UsageError, match="model file not found"):
        source_kind(tmp_path / "nope.keras")
    with pytest.raises(UsageError, match=r"folder without saved_model\.pb"):
        source_kind(tmp_path)
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "saved_model.pb").write_bytes(b"")
    with pytest.raises(UsageError, match=r"SavedModel versions \[1, 2\]: pass one version folder"):
        source_kind(tmp_path)

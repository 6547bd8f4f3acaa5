"""Checksums: files, folders of parquet files, and the manifest a saved folder carries."""

from __future__ import annotations

import hashlib

import pytest

from recbert.digest import MANIFEST, file_sha256, source_sha256, verify_manifest, write_manifest
from recbert.errors import CheckpointError
from recbert.jobs.resume import checked_run_key


def test_file_and_folder_digests(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"one")
    (tmp_path / "p=1").mkdir()
    (tmp_path / "p=1" / "b.parquet").write_bytes(b"two")
    (tmp_path / "notes.txt").write_text("not data")
    assert file_sha256(tmp_path / "a.parquet") == hashlib.sha256(b"one").hexdigest()
    before = source_sha256(tmp_path)
    (tmp_path / "notes.txt").write_text("changed")  # only the parquet files count
    assert source_sha256(tmp_path) == before
    (tmp_path / "p=1" / "b.parquet").write_bytes(b"TWO")
    assert source_sha256(tmp_path) != before


def test_manifest_catches_a_changed_missing_or_resized_file(tmp_path):
    for name in ("w.bin", "c.json"):
        (tmp_path / name).write_bytes(b"x" * 100)
    assert verify_manifest(tmp_path) is False  # none yet: nothing to check
    write_manifest(tmp_path, ["w.bin", "c.json"])
    assert verify_manifest(tmp_path) is True
    (tmp_path / "w.bin").write_bytes(b"y" * 100)
    with pytest.raises(CheckpointError, match="w.bin does not match its checksum"):
        verify_manifest(tmp_path)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(CheckpointError, match="w.bin is listed in .* but missing"):
        verify_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(CheckpointError, match="not a valid checksum manifest"):
        verify_manifest(tmp_path)


@pytest.mark.parametrize("key", ["../x", "a/b", "", ".hidden", "x" * 200, None])
def test_run_keys_that_would_leave_their_folder_are_refused(key):
    with pytest.raises(CheckpointError, match="is not a run id or name"):
        checked_run_key(key)
    assert checked_run_key("run-20261202-010101-abc123") and checked_run_key("0123abcdef")

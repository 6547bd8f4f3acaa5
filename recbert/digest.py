"""Content checksums of data files and folders: the events a run trained on are tagged
with theirs, a resumed run checks it, an index checks its files against its sidecar."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_sha256(path: str | Path) -> str:
    """A file's sha256, or a folder's: over its parquet files' relative paths and
    sha256s in path order (a hive-partitioned events folder)."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    digest = hashlib.sha256()
    for f in sorted(p.rglob("*.parquet")):
        digest.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


MANIFEST = "checksums.json"


def write_manifest(directory: str | Path, names: list[str]) -> None:
    """``checksums.json`` in ``directory``: the sha256 and size of each named file in it."""
    import json

    d = Path(directory)
    files = {n: {"sha256": file_sha256(d / n), "bytes": (d / n).stat().st_size} for n in sorted(names)}
    (d / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")


def verify_manifest(directory: str | Path) -> bool:
    """Check every file ``checksums.json`` lists against its sha256 and size; raise
    :class:`~recbert.errors.CheckpointError` naming the first that differs or is missing.
    False when the folder has no manifest (written before manifests existed)."""
    import json

    from recbert.errors import CheckpointError

    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid checksum manifest: {exc}") from None
    for name, expected in files.items():
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"{f} is listed in {path} but missing")
        if f.stat().st_size != expected["bytes"] or file_sha256(f) != expected["sha256"]:
            raise CheckpointError(f"{f} does not match its checksum in {path}: the file was changed or corrupted "
                                  "after it was saved")
    return True

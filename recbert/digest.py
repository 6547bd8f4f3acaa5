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

"""Write-then-rename helpers, so that nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from recbert.errors import OutputError


def output_error(target: Path, exc: OSError) -> OutputError:
    """The one-line error of a failed write to ``target`` (disk full, not writable, a file
    where a folder should be)."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = f"{reason} ({exc.filename}: a file stands where a folder is needed)"
    return OutputError(f"cannot write {target}: {reason}; nothing was changed there")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it over ``path`` on success.
    An OSError (disk full, permissions) leaves ``path`` as it was and is raised as an
    :class:`~recbert.errors.OutputError` naming it."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise output_error(target, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(target, exc) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` on success (an
    OSError is raised as an :class:`~recbert.errors.OutputError`, ``path`` unchanged)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a result folder should look like any other
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise output_error(target, exc) from None
        raise


def write_parquet_batches(path: str | Path, tables: Iterable, metadata: Optional[dict] = None) -> int:
    """Stream pyarrow tables (one schema) into one parquet file at ``path``, atomically;
    ``metadata`` replaces the schema metadata. Returns the number of rows written; an
    iterable that yields nothing writes nothing and leaves ``path`` untouched."""
    import pyarrow.parquet as pq

    written = 0
    with atomic_path(path) as tmp:
        writer = None
        try:
            for table in tables:
                if metadata is not None:
                    table = table.replace_schema_metadata(metadata)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                written += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"nothing to write to {path}")
    return written

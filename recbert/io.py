"""Write-then-rename helpers, so that nothing is ever left half-written, and the
per-path lock that keeps two processes from writing the same output at once (the second
is refused with the first one's pid, :func:`exclusive`)."""

from __future__ import annotations

import contextlib
import hashlib
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


LOCK_DIR = Path(tempfile.gettempdir()) / f"recbert-locks-{os.getuid() if hasattr(os, 'getuid') else 0}"


@contextlib.contextmanager
def exclusive(path: str | Path, wait: bool = False, what: str = "written") -> Iterator[None]:
    """Hold the lock of ``path`` (its absolute form) for the block: a second process asking
    for it is refused with an :class:`~recbert.errors.OutputError` naming the holder's pid
    (``wait``: it waits instead). Lock files live in a private temp folder, not beside the
    outputs; on a platform without ``fcntl`` nothing is locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    key = os.path.abspath(os.fspath(path))
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    lock = LOCK_DIR / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise OutputError(f"{key} is being {what} by another recbert process (pid {holder}); wait for it to "
                              "finish or choose another path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it over ``path`` on success.
    An OSError (disk full, permissions) leaves ``path`` as it was and is raised as an
    :class:`~recbert.errors.OutputError` naming it; another process writing ``path`` at the
    same time is refused (:func:`exclusive`)."""
    with exclusive(path):
        with _atomic_path(Path(path)) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
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
    OSError is raised as an :class:`~recbert.errors.OutputError`, ``path`` unchanged; a
    second process writing ``path`` at once is refused)."""
    with exclusive(path):
        with _atomic_dir(Path(path)) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
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

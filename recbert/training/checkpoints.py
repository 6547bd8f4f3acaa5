"""Crash-safe training state: checkpoint files a killed training continues from.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and
dicts (so it loads with ``torch.load(weights_only=True)``): the training loop's state
(model, optimiser, schedule, the objective's random generators, the position in the
epoch, the early-stopping state with the best weights so far, the per-epoch history),
the random states of python / numpy / torch, and what the job adds around it (which
stage, the results of the stages before, the run's config). Files are written to a
temporary name, fsynced and renamed, so a kill at any moment leaves the previous
checkpoint intact; a :class:`CheckpointStore` keeps the newest ``keep_last``.

:func:`recbert.runtime.rng_state` / :func:`~recbert.runtime.set_rng_state` carry the
process-wide random states, which dropout draws from: restored with the weights, a
resumed run repeats the uninterrupted one bit for bit on CPU."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from recbert.errors import CheckpointError
from recbert.runtime import uninterrupted

log = logging.getLogger("recbert.train")

FORMAT = 1  # the layout of a checkpoint's dict; bumped when it changes
PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


@dataclass
class Checkpointing:
    """How :func:`recbert.training.loop.fit` checkpoints: ``save`` persists one loop state
    (the job wraps it with its own state; a no-op on the ranks other than 0), after every
    epoch and, with ``every_steps`` > 0, every that many optimiser steps within an epoch."""

    save: Callable[[dict[str, Any]], None]
    every_steps: int = 0


class CheckpointStore:
    """The checkpoint files of one training run: ``directory/ckpt-00000001.pt``, ... in the
    order they were written; the newest ``keep_last`` are kept."""

    def __init__(self, directory: str | Path, keep_last: int = 2):
        if keep_last < 1:
            raise CheckpointError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def files(self) -> list[Path]:
        """The checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as the next checkpoint (temp file, fsync, rename, fsync of the
        folder), then delete all but the newest ``keep_last``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self.files()
        number = int(PATTERN.match(files[-1].name).group(1)) + 1 if files else 1
        path = self.directory / f"ckpt-{number:08d}.pt"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        try:
            with uninterrupted():  # a SIGTERM or Ctrl-C mid-write is raised after the rename
                with os.fdopen(fd, "wb") as f:
                    torch.save({**state, "format": FORMAT}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        for old in (files + [path])[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that loads, with its state; a newer unreadable file is
        reported and skipped. CheckpointError when there is none."""
        files = self.files()
        if not files:
            raise CheckpointError(f"no checkpoint in {self.directory} (files ckpt-NNNNNNNN.pt)")
        errors = []
        for path in reversed(files):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("skipping %s", exc)
                errors.append(str(exc))
        raise CheckpointError(f"no readable checkpoint in {self.directory}: {errors[0]}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """One checkpoint file's state, loaded without executing code (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a recbert checkpoint): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, this recbert reads format {FORMAT}")
    return state


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Where a training run's checkpoints live and how `recbert train --resume RUN` finds the
one to continue from.

A run's checkpoints are ``{out_dir}/checkpoints/{run}/ckpt-*.pt``, ``run`` being its
MLflow run id (or ``run-<UTC time>-<random>`` without MLflow). Each holds, beside the loop
state, the job's own: the run's config (a resumed run trains with exactly that), the
sha256 of its events, the phase it was in (pretrain / train / refit), the results of the
phases before and, for a refit, the weights it restarts from."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from recbert.config import RunConfig
from recbert.data.events import EventSource
from recbert.digest import source_sha256
from recbert.errors import CheckpointError, ConfigError
from recbert.training.checkpoints import CheckpointStore, load_checkpoint

CHECKPOINTS = "checkpoints"


def new_run_key() -> str:
    """A run's name when MLflow gives none: UTC time plus 6 random hex digits."""
    return f"run-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def checked_run_key(key: str, where: str = "run") -> str:
    """``key`` when it is a plain file name (an MLflow run id or ``run-...``), so that no
    path built from it leaves the folder it names; CheckpointError otherwise."""
    if not isinstance(key, str) or not RUN_KEY.fullmatch(key) or ".." in key:
        raise CheckpointError(f"{where}: {key!r} is not a run id or name (letters, digits, '_', '-', '.')")
    return key


def checkpoint_dir(config: RunConfig, run_key: str) -> Path:
    return Path(config.out_dir) / CHECKPOINTS / checked_run_key(run_key)


def events_digest(config: RunConfig, events: Optional[EventSource] = None) -> Optional[str]:
    """The sha256 of the events file or folder the run reads (None for in-memory events)."""
    source = events if events is not None else config.data.events
    if not isinstance(source, (str, Path)) or not Path(source).exists():
        return None
    return source_sha256(source)


@dataclass
class ResumePoint:
    """The checkpoint a run continues from: its file, its state and the run's config."""

    path: Path
    state: dict[str, Any]
    config: RunConfig

    @property
    def job(self) -> dict[str, Any]:
        return self.state["job"]

    @property
    def loop(self) -> dict[str, Any]:
        return self.state["loop"]

    @property
    def phase(self) -> int:
        return int(self.job["phase"])

    @property
    def run_id(self) -> Optional[str]:
        return self.job["run_id"]

    @property
    def run_key(self) -> str:
        return self.job["run_key"]

    def check_events(self, digest: Optional[str]) -> None:
        """Refuse events whose content differs from those the run started on."""
        expected = self.job.get("events_sha256")
        if expected and digest and digest != expected:
            raise CheckpointError(f"the events of {self.config.data.events} changed since run {self.run_key} started "
                                  f"(sha256 {digest[:12]}..., the checkpoint {self.path} has {expected[:12]}...): "
                                  "resume on the same data, or start a new run")


def find_resume_point(target: str | Path, out_dir: str = "runs") -> ResumePoint:
    """The newest readable checkpoint of ``target``: a checkpoint file, a run's checkpoint
    folder, or a run id / name looked up under ``{out_dir}/checkpoints/``."""
    path = Path(target)
    if not path.exists():
        path = Path(out_dir) / CHECKPOINTS / checked_run_key(str(target))
        if not path.is_dir():
            raise CheckpointError(f"nothing to resume for {str(target)!r}: it is not a checkpoint file or folder, and "
                                  f"{path} does not exist (give the run id, its folder or the out_dir it used)")
    if path.is_file():
        file, state = path, load_checkpoint(path)
    else:
        file, state = CheckpointStore(path).latest()
    if not isinstance(state.get("job"), dict) or "loop" not in state:
        raise CheckpointError(f"checkpoint {file} was not written by `recbert train` (no job state)")
    checked_run_key(state["job"].get("run_key"), f"checkpoint {file}")
    try:
        config = RunConfig.from_dict(json.loads(state["job"]["config"]))
    except (ConfigError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {file} carries a config this recbert cannot read: {exc}") from None
    return ResumePoint(file, state, config)


def check_same_config(resumed: RunConfig, given: RunConfig) -> None:
    """Refuse a config (``-c`` / ``--set`` beside ``--resume``) that differs from the run's."""
    a, b = resumed.flat(), given.flat()
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ:
        shown = ", ".join(f"{k} ({a.get(k)!r} in the run, {b.get(k)!r} given)" for k in differ[:4])
        raise ConfigError(f"--resume continues the run with its own config; the config given differs in "
                          f"{len(differ)} key(s): {shown}{', ...' if len(differ) > 4 else ''}. Drop -c/--set "
                          "or start a new run")

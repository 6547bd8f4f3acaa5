"""Process set-up shared by every job: seeds, torch threads and the device."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from recbert.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: Optional[int]) -> None:
    """torch intra-op threads (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``'auto'``: CUDA when available, else CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...): {exc}") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asks for CUDA, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return device

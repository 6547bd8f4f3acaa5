"""Padded [B, L, H] batches with masks, shared by the tests of blocks and poolings."""

from __future__ import annotations

import torch

H, L = 8, 6
LENGTHS = (6, 2, 4, 1)


def rows(seed: int = 0) -> list[torch.Tensor]:
    """Sequences of LENGTHS real [n, H] states."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, H, generator=g) for n in LENGTHS]


def pad(seqs: list[torch.Tensor], left: bool = True, value: float = 0.0):
    """Batch [B, L, H] and mask [B, L]; real tokens at the end of the row when ``left``."""
    x = torch.full((len(seqs), L, H), value)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, s in enumerate(seqs):
        span = slice(L - len(s), L) if left else slice(0, len(s))
        x[b, span] = s
        mask[b, span] = True
    return x, mask


def adversarial(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded positions set to alternating +-1e6."""
    sign = torch.where(torch.arange(H) % 2 == 0, 1e6, -1e6).expand_as(x)
    return torch.where(mask[..., None], x, sign)

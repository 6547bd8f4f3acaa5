"""AdamW with decay only on weight matrices, and warm-up + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from recbert.config import StageConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Biases, LayerNorm weights and other 1-D parameters get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(model, stage.weight_decay), lr=stage.lr, betas=(0.9, 0.98))


def make_schedule(optimizer: torch.optim.Optimizer, stage: StageConfig, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear or cosine
    decay to zero at ``total_steps``, or a constant rate."""
    return lr_schedule(optimizer, total_steps, stage.warmup_ratio, stage.schedule)


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str
                ) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of :func:`make_schedule` from its two settings; it scales every
    parameter group's own learning rate by the same factor."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be 'linear', 'cosine' or 'constant', got {schedule!r}")
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

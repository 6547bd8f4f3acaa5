"""Data-parallel training across the ranks of a torchrun job (:class:`recbert.runtime.DistributedContext`):
the model wrapped in DistributedDataParallel for the training steps (gradients averaged
across ranks, the scorer's included) and the sums the loop reduces over all ranks.
With world size 1 every function leaves things as they are."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from recbert.runtime import DistributedContext


def wrap_for_training(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` in DistributedDataParallel when ``context`` has more than one rank (rank
    0's weights are broadcast to all on wrapping), else ``model`` itself."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (``model`` when not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sum_over_ranks(loss: Tensor, context: DistributedContext) -> Tensor:
    """The detached ``loss`` summed over all ranks: finite only if it is finite on every rank."""
    if not context.distributed:
        return loss
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def sum_values_over_ranks(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Each named number summed over all ranks (the same keys on every rank)."""
    if not context.distributed:
        return values
    keys = sorted(values)
    totals = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=context.device)
    torch.distributed.all_reduce(totals)
    return dict(zip(keys, totals.tolist()))

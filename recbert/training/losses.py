"""Item losses: computed only at positions that carry a target.

A loss takes the encoder's hidden vectors at target positions ``[N, H]``, the
target tokens ``[N]`` and the model's item scorer, and returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbert.data.vocab import N_SPECIAL
from recbert.errors import DivergenceError

ItemLoss = Callable[[Tensor, Tensor, nn.Module], Tensor]


def full_softmax_loss(hidden: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
    """Cross-entropy over the whole catalogue (every real item is a negative)."""
    return F.cross_entropy(scorer(hidden), targets - N_SPECIAL)


LOSSES: dict[str, ItemLoss] = {"full_softmax": full_softmax_loss}


def gather_targets(hidden_states: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden vectors and labels at positions whose label is not PAD."""
    where = labels > 0
    return hidden_states[where], labels[where]


def check_finite_loss(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    """Stop training on a NaN or infinite loss, before it reaches the weights."""
    if not bool(torch.isfinite(loss.detach())):
        raise DivergenceError(f"training loss is not finite ({float(loss.detach())}): {stage} diverged at "
                              f"epoch {epoch}, step {step} of that epoch")

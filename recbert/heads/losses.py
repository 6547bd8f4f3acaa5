"""Losses for task heads: focal loss (binary / multi-label and multi-class) and helpers.

Focal loss (Lin et al., 2017) scales each sample's cross-entropy by ``(1 - p_t) ** gamma``,
``p_t`` being the probability given to the true class, so that easy examples weigh less.
With ``gamma = 0`` (and no ``alpha``) both functions equal the plain cross-entropy exactly,
including the class-weighted mean that ``F.cross_entropy(weight=...)`` computes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recbert.finite import require_finite

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str, weights: Optional[Tensor] = None) -> Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {REDUCTIONS}")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weights is not None:  # weighted mean, as F.cross_entropy(weight=...) does
        return loss.sum() / weights.sum().clamp(min=torch.finfo(loss.dtype).tiny)
    return loss.mean()


def binary_focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Optional[float] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid focal loss for binary or multi-label logits (any shape; ``targets`` the same
    shape with values in [0, 1], soft labels allowed).

    ``alpha`` (in [0, 1]) weighs positives by ``alpha`` and negatives by ``1 - alpha``;
    ``weight`` is broadcast onto the element losses (e.g. per-class weights ``[C]``).
    ``reduction='mean'`` averages over all elements.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = loss * (1 - p_t).clamp(min=0).pow(gamma)
    if alpha is not None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return _reduce(loss, reduction)


def multiclass_focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Softmax focal loss: ``logits [N, C]``, integer ``targets [N]`` in ``[0, C)``.

    ``weight [C]`` are class weights (the ``alpha`` of the paper per class); with
    ``reduction='mean'`` the result is the weight-normalised mean, so ``gamma=0`` gives
    exactly ``F.cross_entropy(logits, targets, weight=weight)``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.long()
    log_p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # log p_t
    loss = -log_p
    if gamma > 0:
        loss = loss * (1 - log_p.exp()).clamp(min=0).pow(gamma)
    w = None
    if weight is not None:
        w = weight.to(logits.dtype)[targets]
        loss = loss * w
    return _reduce(loss, reduction, w)


def inverse_frequency_weights(labels: Tensor | Sequence[int], n_classes: int, smoothing: float = 1.0) -> list[float]:
    """Class weights ``N / (C * (count_c + smoothing))`` (balanced classes give about 1 each);
    for multi-class integer labels. Handy for ``HeadConfig.class_weights``."""
    t = torch.as_tensor(labels).long().flatten()
    counts = torch.bincount(t, minlength=n_classes)[:n_classes].double()
    w = t.numel() / (n_classes * (counts + smoothing))
    return [float(x) for x in w]


def binary_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Share of (element-wise) correct 0/1 decisions at logit 0."""
    return float(((logits > 0).to(targets.dtype) == (targets > 0.5).to(targets.dtype)).float().mean())


def multiclass_accuracy(logits: Tensor, targets: Tensor) -> float:
    return float((logits.argmax(dim=-1) == targets.long()).float().mean())


def roc_auc(scores: Tensor, targets: Tensor) -> float:
    """ROC AUC of scores against 0/1 targets (ties count one half); NaN with one class."""
    s = scores.detach().double().flatten().cpu()
    require_finite(s)
    y = targets.detach().flatten().cpu() > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    sorted_s = s[order]
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

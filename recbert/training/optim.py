"""The one optimiser factory of every training loop (pretraining, next-item training,
fine-tuning): freezing, AdamW parameter groups with layer-wise learning-rate decay and
no weight decay on 1-D parameters, and warm-up + decay schedules.

* ``apply_freeze(model, freeze, trainable_layers)``: one of :data:`FREEZE_MODES`:
  'none' | 'all' (the whole recommender: only a head trains) | 'embeddings' | 'partial'
  (only the top ``trainable_layers`` encoder layers, plus what sits above them: final
  norm, fusion, reuse block, scorer);
* ``parameter_groups(model, lr, weight_decay, head_lr, layer_decay)``: layer i of n gets
  ``lr * layer_decay ** (n - i)`` (embeddings are layer 0, the parts above the last layer
  layer n), head parameters ``head_lr``; biases and LayerNorm weights no decay;
* ``lr_schedule(optimizer, total_steps, warmup_ratio, schedule)``: one of :data:`SCHEDULES`;
* lazy item updates (``make_optimizer(..., lazy_items=True)``): the item embedding table
  gets sparse gradients and :class:`torch.optim.SparseAdam`, which moves only the rows of
  the items in the batch and keeps the other rows' moments as they are (plain Adam moves
  every row every step with stale moments, and its dense step over a 1M-item table
  dominates the step time); the rest, the per-item bias included, keeps AdamW. The table
  then gets no weight decay. Only for sampled losses: the full softmax's gradient is dense.

Parameter names are a bare recommender's (``encoder.layers.0...``) or a head model's
(``backbone.encoder.layers.0...``); anything outside the recommender is the head.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

import torch
from torch import nn

from recbert.errors import ConfigError
from recbert.model.recommender import BACKBONE_PARTS, backbone_part

FREEZE_MODES = ("none", "all", "embeddings", "partial")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
BETAS = (0.9, 0.98)


def _n_layers(model: nn.Module) -> int:
    return len(model.encoder.layers)


def layer_depth(name: str, n_layers: int) -> Optional[int]:
    """0 for embeddings, i + 1 for encoder layer i, ``n_layers`` for the parts above the
    last layer (final norm, fusion, reuse, scorer); None for head parameters."""
    name = backbone_part(name) or name
    part = name.split(".", 1)[0]
    if part not in BACKBONE_PARTS:
        return None
    if part == "embeddings":
        return 0
    m = _LAYER.match(name)
    if m:
        return int(m.group(1)) + 1
    return n_layers


def apply_freeze(model: nn.Module, freeze: str = "none", trainable_layers: int = 1) -> list[str]:
    """Set ``requires_grad`` per ``freeze``; returns the names of trainable parameters."""
    if freeze not in FREEZE_MODES:
        raise ConfigError(f"freeze must be one of {list(FREEZE_MODES)}, got {freeze!r}")
    n = _n_layers(model)
    if freeze == "partial" and not 1 <= trainable_layers <= n:
        raise ConfigError(f"finetune.trainable_layers must be in [1, {n}] (the encoder's layers), "
                          f"got {trainable_layers}")
    trainable = []
    for name, p in model.named_parameters():
        depth = layer_depth(name, n)
        if depth is None or freeze == "none":
            train = True
        elif freeze == "all":
            train = False
        elif freeze == "embeddings":
            train = depth > 0
        else:  # partial: layers n - k + 1 .. n and everything above
            train = depth > n - trainable_layers
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


def set_train_modes(model: nn.Module, training: bool = True) -> nn.Module:
    """``model.train(training)``, then every submodule whose parameters are all frozen is
    put in eval mode, so frozen parts run deterministically (no dropout) while the
    trainable parts train. Returns ``model``."""
    model.train(training)
    if training:
        for _, module in model.named_modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: Optional[float] = None,
                     layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups (trainable parameters only), each with ``name``, ``lr``,
    ``weight_decay`` and ``params``; ordered from the embeddings up to the head."""
    n = _n_layers(model)
    head_lr = lr if head_lr is None else head_lr
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, n)
        if depth is None:
            key, group_lr, order = "head", head_lr, n + 1
        else:
            key, group_lr, order = f"layer_{depth}", lr * layer_decay ** (n - depth), depth
        decay = p.ndim >= 2
        g = groups.setdefault((key, decay), {
            "name": f"{key}{'' if decay else '_no_decay'}", "lr": group_lr,
            "weight_decay": weight_decay if decay else 0.0, "params": [], "_order": (order, not decay)})
        g["params"].append(p)
    out = sorted(groups.values(), key=lambda g: g["_order"])
    for g in out:
        del g["_order"]
    return out


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr: Optional[float] = None,
                   layer_decay: float = 1.0, lazy_items: bool = False) -> torch.optim.Optimizer:
    """AdamW (betas 0.9 / 0.98) over :func:`parameter_groups`; with ``lazy_items``, the
    item table apart, under SparseAdam (module docstring)."""
    table = model.embeddings.item.weight if lazy_items else None
    groups = parameter_groups(model, lr, weight_decay, head_lr, layer_decay)
    if table is not None:
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not table]
        groups = [g for g in groups if g["params"]]
    if not groups and table is None:
        raise ConfigError("nothing to train: every parameter is frozen")
    dense = torch.optim.AdamW(groups, lr=lr, betas=BETAS) if groups else None
    if table is None:
        return dense
    model.embeddings.item.sparse = True
    sparse = torch.optim.SparseAdam([{"name": "item_table", "params": [table], "lr": lr}], lr=lr, betas=BETAS)
    return CombinedOptimizer([o for o in (sparse, dense) if o is not None])


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped as one (SparseAdam for the item table, AdamW for the
    rest). ``param_groups`` are the inner optimisers' own group dicts, so a scheduler's
    learning rates reach them."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - as torch.optim.Optimizer.step
        for optimizer in self.optimizers:
            optimizer.step()


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale gradients to a total 2-norm of at most ``max_norm``: torch's own clipping
    for dense gradients; sparse ones (lazy item updates) enter the norm by their values."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    norms = [(g.coalesce().values() if g.is_sparse else g).norm() for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)


def _linear(progress: float) -> float:
    return max(0.0, 1.0 - progress)


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(progress: float) -> float:
    return 1.0


# decay after the warm-up, as a factor of the base rate at ``progress`` in [0, 1]
SCHEDULES: dict[str, Callable[[float], float]] = {"linear": _linear, "cosine": _cosine, "constant": _constant}


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str
                ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then the named decay (to zero at
    ``total_steps`` for 'linear' / 'cosine'); it scales every group's own rate alike."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    decay = SCHEDULES[schedule]
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

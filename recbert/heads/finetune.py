"""Fine-tuning a pretrained encoder with a task head.

* ``apply_freeze(model, cfg)``: 'none' | 'all' (the whole pretrained encoder) |
  'embeddings' | 'partial' (only the top ``trainable_layers`` encoder layers, plus what
  sits above them: final norm, fusion, reuse block, scorer transform, train).
* ``param_groups(model, cfg)``: AdamW groups with layer-wise lr decay
  (layer i of n: ``encoder_lr * layer_decay ** (n - i)``; embeddings are layer 0; the
  parts above the encoder get ``encoder_lr``; the head ``head_lr``) and no weight decay
  on 1-D parameters (biases, LayerNorm).
* ``finetune(...)``: a compact loop, total loss ``lambda * mlm + (1 - lambda) * head``,
  early stopping on a validation metric, best weights restored.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional

import torch
from torch import Tensor, nn

from recbert.config import build_section
from recbert.data.batches import mask_tokens
from recbert.errors import ConfigError, DivergenceError
from recbert.model.checkpoint import model_config_of
from recbert.model.recommender import BACKBONE_PARTS, backbone_part
from recbert.training.losses import check_finite_loss, full_softmax_loss, gather_targets
from recbert.training.optim import lr_schedule

Freeze = Literal["none", "all", "embeddings", "partial"]
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass
class FinetuneConfig:
    freeze: Freeze = "none"
    trainable_layers: int = 1  # 'partial': how many top encoder layers train
    encoder_lr: float = 1e-3  # small recommender encoders: 1e-4 left them under-trained (BENCHMARKS.md)
    head_lr: float = 1e-3
    layer_decay: float = 1.0  # 1.0 = the same lr for every encoder layer
    weight_decay: float = 0.01
    # 'mlm': continued cloze loss; 'head': the head's auxiliary classifier on the plain last
    # layer (build the head with aux_head=true; the seed used lambda = 0.8)
    aux: Literal["none", "mlm", "head"] = "none"
    aux_lambda: float = 0.0  # total = lambda * aux + (1 - lambda) * head
    mask_prob: float = 0.2  # MLM auxiliary masking
    last_item_mask_prob: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    warmup_ratio: float = 0.1  # share of all steps with a linear warm-up
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after the warm-up
    patience: int = 3  # evaluations without improvement before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.freeze not in ("none", "all", "embeddings", "partial"):
            raise ConfigError(f"finetune.freeze must be one of ['none', 'all', 'embeddings', 'partial'], "
                              f"got {self.freeze!r}")
        if self.freeze == "partial" and self.trainable_layers < 1:
            raise ConfigError(f"finetune.trainable_layers must be >= 1 with freeze='partial', "
                              f"got {self.trainable_layers}")
        for name in ("encoder_lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"finetune.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.weight_decay < 0:
            raise ConfigError(f"finetune.weight_decay must be >= 0, got {self.weight_decay}")
        if self.aux not in ("none", "mlm", "head"):
            raise ConfigError(f"finetune.aux must be 'none', 'mlm' or 'head', got {self.aux!r}")
        if not 0.0 <= self.aux_lambda < 1.0:
            raise ConfigError(f"finetune.aux_lambda must be in [0, 1), got {self.aux_lambda}")
        if self.aux == "none" and self.aux_lambda > 0:
            raise ConfigError(f"finetune.aux_lambda={self.aux_lambda} needs an auxiliary loss: "
                              "set finetune.aux='mlm' or 'head'")
        if self.aux != "none" and self.freeze == "all":
            raise ConfigError(f"finetune.aux={self.aux!r} with finetune.freeze='all' does nothing: "
                              "the auxiliary loss only shapes the encoder, which is frozen")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"finetune.mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.last_item_mask_prob <= 1.0:
            raise ConfigError(f"finetune.last_item_mask_prob must be in [0, 1], got {self.last_item_mask_prob}")
        if self.grad_clip < 0:
            raise ConfigError(f"finetune.grad_clip must be >= 0, got {self.grad_clip}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"finetune.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ConfigError(f"finetune.schedule must be one of ['linear', 'cosine', 'constant'], "
                              f"got {self.schedule!r}")
        if self.patience < 1:
            raise ConfigError(f"finetune.patience must be >= 1, got {self.patience}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FinetuneConfig":
        return build_section(cls, raw, "finetune.", cls())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- freezing and parameter groups ---------------------------------------------------------
def _n_layers(model: nn.Module) -> int:
    return len(model.encoder.layers)


def layer_depth(name: str, n_layers: int) -> Optional[int]:
    """0 for embeddings, i + 1 for encoder layer i, ``n_layers`` for the parts above the
    last layer (final norm, fusion, reuse, scorer); None for head parameters. Names are a
    head model's (``backbone.encoder.layers.0...``) or a bare recommender's (``encoder...``)."""
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


def apply_freeze(model: nn.Module, cfg: FinetuneConfig) -> list[str]:
    """Set ``requires_grad`` per ``cfg.freeze``; returns the names of trainable parameters."""
    n = _n_layers(model)
    if cfg.freeze == "partial" and not 1 <= cfg.trainable_layers <= n:
        raise ConfigError(f"finetune.trainable_layers must be in [1, {n}] (the encoder's layers), "
                          f"got {cfg.trainable_layers}")
    trainable = []
    for name, p in model.named_parameters():
        depth = layer_depth(name, n)
        if depth is None or cfg.freeze == "none":
            train = True
        elif cfg.freeze == "all":
            train = False
        elif cfg.freeze == "embeddings":
            train = depth > 0
        else:  # partial: layers n - k + 1 .. n and everything above
            train = depth > n - cfg.trainable_layers
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """AdamW parameter groups (trainable parameters only), each with ``name``, ``lr``,
    ``weight_decay`` and ``params``; ordered from the embeddings up to the head."""
    n = _n_layers(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, n)
        if depth is None:
            key, lr, order = "head", cfg.head_lr, n + 1
        else:
            key, lr, order = f"layer_{depth}", cfg.encoder_lr * cfg.layer_decay ** (n - depth), depth
        decay = p.ndim >= 2
        g = groups.setdefault((key, decay), {
            "name": f"{key}{'' if decay else '_no_decay'}", "lr": lr,
            "weight_decay": cfg.weight_decay if decay else 0.0, "params": [], "_order": (order, not decay)})
        g["params"].append(p)
    out = sorted(groups.values(), key=lambda g: g["_order"])
    for g in out:
        del g["_order"]
    return out


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


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, betas=(0.9, 0.98))


# -- the auxiliary MLM loss ---------------------------------------------------------------
def mlm_aux_loss(model: nn.Module, input_ids: Tensor, cfg: FinetuneConfig, generator: torch.Generator) -> Tensor:
    """The pretrained cloze loss on ``input_ids`` (left-padded history rows): mask, encode
    bidirectionally, score masked positions with the tied item scorer (full softmax)."""
    scorer = getattr(model, "scorer", None)
    if scorer is None:
        raise ConfigError("finetune.aux='mlm' needs the pretrained item scorer: build the head with keep_scorer=True")
    cfg_m = model_config_of(model)
    inputs, labels = mask_tokens(input_ids.detach().cpu(), cfg_m.n_tokens, cfg.mask_prob,
                                 cfg.last_item_mask_prob, generator)
    device = input_ids.device
    out = model.encode(inputs.to(device), causal=False)
    hidden, targets = gather_targets(out.sequence_output, labels.to(device))
    if targets.numel() == 0:
        return out.sequence_output.sum() * 0.0
    return full_softmax_loss(hidden, targets, scorer)


# -- the loop --------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    best_metric: float
    best_epoch: int  # 0-based; -1 when validation never improved on the start
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)  # per epoch: loss, head_loss, aux_loss, metric


Batch = tuple  # (*model_inputs, labels); model_inputs[0] = left-padded history rows


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, Tensor) else x


def finetune(
    model: nn.Module,
    train_batches_fn: Callable[[int], Iterable[Batch]],
    val_fn: Callable[[nn.Module], float],
    cfg: FinetuneConfig,
    epochs: int,
    *,
    higher_is_better: bool = True,
    device: str | torch.device | None = None,
    max_minutes: Optional[float] = None,
    log: Optional[Callable[[dict], None]] = None,
    steps_per_epoch: Optional[int] = None,
) -> FinetuneResult:
    """Train ``model`` (a head model with ``forward(*inputs)`` and ``loss(logits, labels)``).

    ``train_batches_fn(epoch)`` yields tuples ``(*inputs, labels)`` whose first input is the
    history rows; ``val_fn(model)`` returns the selection metric (called in eval mode).
    Freezing is applied from ``cfg`` and frozen parts run in eval mode (no dropout); the
    learning rates follow ``cfg.warmup_ratio`` / ``cfg.schedule`` over ``epochs *
    steps_per_epoch`` steps (counted from epoch 0's batches when not given); the best
    weights (by the metric) are restored at the end. Labels are validated by the head's
    ``loss`` on every step.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    apply_freeze(model, cfg)
    opt = make_optimizer(model, cfg)
    if steps_per_epoch is None:
        steps_per_epoch = sum(1 for _ in train_batches_fn(0)) if epochs else 0
    sched = lr_schedule(opt, max(1, epochs * steps_per_epoch), cfg.warmup_ratio, cfg.schedule)
    gen = torch.Generator().manual_seed(cfg.seed)
    lam = cfg.aux_lambda if cfg.aux != "none" else 0.0
    if cfg.aux == "head" and not getattr(getattr(model, "head_config", None), "aux_head", False):
        raise ConfigError("finetune.aux='head' needs a head built with an auxiliary classifier "
                          "(head.aux_head=true / ctr.aux_head=true)")
    sign = 1.0 if higher_is_better else -1.0

    def evaluate(epoch: int) -> float:
        model.eval()
        try:
            with torch.no_grad():
                value = float(val_fn(model))
        except DivergenceError as exc:
            when = "before fine-tuning" if epoch == 0 else f"fine-tuning diverged at epoch {epoch}"
            raise DivergenceError(f"model scores are not finite: {when} ({exc.detail})", exc.detail) from None
        set_train_modes(model)
        return value

    best = evaluate(0)
    best_epoch, bad, stopped = -1, 0, False
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    start = time.monotonic()
    epoch = -1
    for epoch in range(epochs):
        set_train_modes(model)
        sums = {"loss": 0.0, "head_loss": 0.0, "aux_loss": 0.0}
        steps = 0
        for batch in train_batches_fn(epoch):
            *inputs, labels = (_to(x, dev) for x in batch)
            aux = None
            if cfg.aux == "head":
                logits, aux_logits = model.forward_with_aux(*inputs)
                head_loss = model.loss(logits, labels)
                aux = model.loss(aux_logits, labels, validate=False)
            else:
                head_loss = model.loss(model(*inputs), labels)
                if lam > 0:
                    aux = mlm_aux_loss(model, inputs[0], cfg, gen)
            loss = head_loss if aux is None else lam * aux + (1 - lam) * head_loss
            check_finite_loss(loss, "fine-tuning", epoch + 1, steps + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach())
            sums["head_loss"] += float(head_loss.detach())
            sums["aux_loss"] += float(aux.detach()) if aux is not None else 0.0
            steps += 1
        metric = evaluate(epoch + 1)
        row = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()}, "metric": metric, "steps": steps,
               "lr": opt.param_groups[-1]["lr"]}
        history.append(row)
        if log is not None:
            log(row)
        if math.isfinite(metric) and sign * metric > sign * best:
            best, best_epoch, bad = metric, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                stopped = True
                break
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            stopped = True
            break
    model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(best, best_epoch, epoch + 1, stopped, history)

"""Fine-tuning a pretrained encoder with a task head.

* ``FinetuneConfig``: freezing (:data:`recbert.training.optim.FREEZE_MODES`), encoder and
  head learning rates with layer-wise decay, the auxiliary loss, schedule, patience;
* ``HeadObjective``: the head's loss plus the optional auxiliary encoder loss, total
  ``lambda * aux + (1 - lambda) * head``;
* ``finetune(...)``: freezing + the one optimiser factory + the one training loop
  (:mod:`recbert.training.optim`, :mod:`recbert.training.loop`), early stopping on a
  validation metric, best weights restored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from recbert.config import build_section
from recbert.data.batches import mask_tokens
from recbert.data.vocab import catalogue_size
from recbert.errors import ConfigError
from recbert.model.checkpoint import model_config_of
from recbert.training.loop import FitResult, FitSettings, StepLoss, fit
from recbert.training.losses import full_softmax_loss, gather_targets
from recbert.training.optim import FREEZE_MODES, SCHEDULES, apply_freeze, lr_schedule, make_optimizer

# the auxiliary encoder losses of fine-tuning ('none': the head's loss alone)
AUX_LOSSES = ("none", "mlm", "head")
Freeze = Literal[FREEZE_MODES]
Schedule = Literal[tuple(SCHEDULES)]
AuxLoss = Literal[AUX_LOSSES]


@dataclass(frozen=True)
class FinetuneConfig:
    freeze: Freeze = "none"
    trainable_layers: int = 1  # 'partial': how many top encoder layers train
    encoder_lr: float = 1e-3  # small recommender encoders: 1e-4 left them under-trained (BENCHMARKS.md)
    head_lr: float = 1e-3
    layer_decay: float = 1.0  # 1.0 = the same lr for every encoder layer
    weight_decay: float = 0.01
    # 'mlm': continued cloze loss; 'head': the head's auxiliary classifier on the plain last
    # layer (build the head with aux_head=true; the seed used lambda = 0.8)
    aux: AuxLoss = "none"
    aux_lambda: float = 0.0  # total = lambda * aux + (1 - lambda) * head
    mask_prob: float = 0.2  # MLM auxiliary masking
    last_item_mask_prob: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    warmup_ratio: float = 0.1  # share of all steps with a linear warm-up
    schedule: Schedule = "linear"  # decay after the warm-up
    patience: int = 3  # evaluations without improvement before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"finetune.freeze must be one of {list(FREEZE_MODES)}, got {self.freeze!r}")
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
        if self.aux not in AUX_LOSSES:
            raise ConfigError(f"finetune.aux must be one of {list(AUX_LOSSES)}, got {self.aux!r}")
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
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"finetune.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.patience < 1:
            raise ConfigError(f"finetune.patience must be >= 1, got {self.patience}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FinetuneConfig":
        return build_section(cls, raw, "finetune.", cls())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    hidden, targets = gather_targets(out.sequence_output, labels.to(device),
                                     catalogue_size(cfg_m.n_tokens, cfg_m.hash_buckets))
    if targets.numel() == 0:
        return out.sequence_output.sum() * 0.0
    return full_softmax_loss(hidden, targets, scorer)


# -- the objective and the loop ------------------------------------------------------------
Batch = tuple  # (*model_inputs, labels); model_inputs[0] = left-padded history rows


class HeadObjective:
    """A head's loss on its batches, with the optional auxiliary encoder loss: total =
    ``lambda * aux + (1 - lambda) * head`` where aux is the continued cloze loss ('mlm')
    or the head's auxiliary classifier on the plain last layer ('head')."""

    name = "finetune"

    def __init__(self, train_batches_fn: Callable[[int], Iterable[Batch]], cfg: FinetuneConfig,
                 steps_per_epoch: int, device: torch.device):
        self.train_batches_fn = train_batches_fn
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.device = device
        self.lam = cfg.aux_lambda if cfg.aux != "none" else 0.0
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def batches(self, epoch: int) -> Iterator[Batch]:
        for batch in self.train_batches_fn(epoch - 1):  # the batch functions count epochs from 0
            yield tuple(x.to(self.device) if isinstance(x, Tensor) else x for x in batch)

    def loss(self, model: nn.Module, batch: Batch) -> StepLoss:
        *inputs, labels = batch
        aux = None
        if self.cfg.aux == "head":
            logits, aux_logits = model.forward_with_aux(*inputs)
            head_loss = model.loss(logits, labels)
            aux = model.loss(aux_logits, labels, validate=False)
        else:
            head_loss = model.loss(model(*inputs), labels)
            if self.lam > 0:
                aux = mlm_aux_loss(model, inputs[0], self.cfg, self.generator)
        total = head_loss if aux is None else self.lam * aux + (1 - self.lam) * head_loss
        parts = {"head_loss": head_loss.detach(),
                 "aux_loss": aux.detach() if aux is not None else torch.zeros((), device=head_loss.device)}
        return StepLoss(total, n=len(labels), parts=parts)


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
    sink: Optional[Callable[[dict[str, float], int], None]] = None,
    steps_per_epoch: Optional[int] = None,
) -> FitResult:
    """Train ``model`` (a head model with ``forward(*inputs)`` and ``loss(logits, labels)``)
    with the one training loop (:func:`recbert.training.loop.fit`).

    ``train_batches_fn(epoch)`` (epochs from 0) yields tuples ``(*inputs, labels)`` whose
    first input is the history rows; ``val_fn(model)`` returns the selection metric
    (called in eval mode, first before any training: the starting weights are the first
    "best"). Freezing is applied from ``cfg`` and frozen parts run in eval mode (no
    dropout); the learning rates (layer-wise decay, head rate) follow ``cfg.warmup_ratio``
    / ``cfg.schedule`` over ``epochs * steps_per_epoch`` steps (counted from epoch 0's
    batches when not given); the best weights are restored and the model is left in
    eval mode. Per-epoch records (``finetune/loss``, ``finetune/head_loss``,
    ``finetune/aux_loss``, ``finetune/lr``, ``val/metric``, ...) go to ``sink``.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if cfg.aux == "head" and not getattr(getattr(model, "head_config", None), "aux_head", False):
        raise ConfigError("finetune.aux='head' needs a head built with an auxiliary classifier "
                          "(head.aux_head=true / ctr.aux_head=true)")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    apply_freeze(model, cfg.freeze, cfg.trainable_layers)
    opt = make_optimizer(model, cfg.encoder_lr, cfg.weight_decay, head_lr=cfg.head_lr, layer_decay=cfg.layer_decay)
    if steps_per_epoch is None:
        steps_per_epoch = sum(1 for _ in train_batches_fn(0)) if epochs else 0
    sched = lr_schedule(opt, max(1, epochs * steps_per_epoch), cfg.warmup_ratio, cfg.schedule)
    objective = HeadObjective(train_batches_fn, cfg, steps_per_epoch, dev)

    def validate(m: nn.Module) -> tuple[float, dict[str, float]]:
        value = float(val_fn(m))
        return value, {"val/metric": value}

    settings = FitSettings(epochs=epochs, patience=cfg.patience, grad_clip=cfg.grad_clip, max_minutes=max_minutes,
                           higher_is_better=higher_is_better, evaluate_first=True)
    result = fit(model, objective, opt, sched, settings, validate, sink)
    model.eval()
    return result

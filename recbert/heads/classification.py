"""Sequence classification on a (pretrained) encoder: pooling -> residual MLP tower -> logits.

Tasks: 'multiclass' (softmax over ``n_classes``; integer labels ``[B]``), 'multilabel'
(independent sigmoids; a 0/1 matrix ``[B, n_classes]``) and 'binary' (one sigmoid logit;
labels ``[B]`` in [0, 1]). The encoder always runs bidirectionally here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbert.config import build_section
from recbert.errors import ConfigError, DataError
from recbert.heads.base import EncoderHeadModel
from recbert.heads.losses import binary_focal_loss, multiclass_focal_loss
from recbert.model.mlp import VARIANTS, ResidualMLP, TowerVariant
from recbert.model.pooling import POOLING_KINDS, build_pooling
from recbert.model.recommender import SequenceRecommender

TASKS = ("multiclass", "multilabel", "binary")
Task = Literal[TASKS]


@dataclass(frozen=True)
class HeadConfig:
    """A classification head. ``class_weights``: one weight per class (binary: [negative,
    positive]); ``focal_alpha``: positive-class weight of the sigmoid focal loss."""

    task: Task = "multiclass"
    n_classes: int = 2
    pooling: str = "mean"
    cls_position: int = -1  # for 'cls' / 'lstm_attention' pooling: -1 = newest event ([MASK] with append_mask)
    append_mask: bool = False  # append [MASK] to every history: the cloze model's user-vector slot
    aux_head: bool = False  # a linear classifier on the pooled plain last encoder layer (finetune.aux='head')
    pool_heads: int = 2  # for 'lstm_attention'
    hidden_dims: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    variant: TowerVariant = "add"  # "plain": no skip path (ablation)
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0
    focal_alpha: Optional[float] = None
    class_weights: Optional[list[float]] = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"head.task must be one of {list(TASKS)}, got {self.task!r}")
        if self.task == "multiclass" and self.n_classes < 2:
            raise ConfigError(f"head.n_classes must be >= 2 for a multiclass head, got {self.n_classes}")
        if self.task == "multilabel" and self.n_classes < 1:
            raise ConfigError(f"head.n_classes must be >= 1 for a multilabel head, got {self.n_classes}")
        if self.task == "binary" and self.n_classes != 2:
            raise ConfigError(f"head.n_classes must be 2 for a binary head (one sigmoid logit), got {self.n_classes}")
        if self.pooling not in POOLING_KINDS:
            raise ConfigError(f"head.pooling must be one of {list(POOLING_KINDS)}, got {self.pooling!r}")
        if any(d < 1 for d in self.hidden_dims):
            raise ConfigError(f"head.hidden_dims must be positive widths, got {self.hidden_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"head.variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.loss not in ("ce", "focal"):
            raise ConfigError(f"head.loss must be 'ce' or 'focal', got {self.loss!r}")
        if self.focal_gamma < 0:
            raise ConfigError(f"head.focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.focal_alpha is not None:
            if self.task == "multiclass":
                raise ConfigError("head.focal_alpha applies to sigmoid heads only; "
                                  "use head.class_weights for a multiclass head")
            if not 0.0 <= self.focal_alpha <= 1.0:
                raise ConfigError(f"head.focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if self.class_weights is not None:
            if len(self.class_weights) != self.n_classes:
                raise ConfigError(f"head.class_weights must have n_classes={self.n_classes} entries"
                                  f"{' ([negative, positive])' if self.task == 'binary' else ''}, "
                                  f"got {len(self.class_weights)}")
            if any(w < 0 for w in self.class_weights) or not any(w > 0 for w in self.class_weights):
                raise ConfigError(f"head.class_weights must be >= 0 with one > 0, got {self.class_weights}")

    @property
    def out_dim(self) -> int:
        return 1 if self.task == "binary" else self.n_classes

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "HeadConfig":
        """Strict construction (unknown keys rejected, values coerced), like RunConfig."""
        return build_section(cls, raw, "head.", cls())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_labels(labels: Tensor, cfg: HeadConfig) -> Tensor:
    """Validate ``labels`` for ``cfg``'s task and return them in the loss's dtype/shape.

    Raises ConfigError when the label layout belongs to another task (e.g. a multi-label
    0/1 matrix given to a multiclass head) and DataError for values outside the classes.
    """
    labels = torch.as_tensor(labels)
    if cfg.task == "multiclass":
        if labels.ndim == 2 and labels.shape[1] == cfg.n_classes and labels.shape[1] > 1:
            raise ConfigError(
                f"multilabel targets (a [B, {cfg.n_classes}] matrix) given to a multiclass (softmax) head; "
                "set head.task='multilabel', or pass one class index per row")
        if labels.ndim != 1:
            raise ConfigError(f"a multiclass head takes class indices of shape [B], got shape {tuple(labels.shape)}")
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise DataError("multiclass labels must be integer class indices, got fractional values "
                                f"{labels[labels != labels.round()][:5].tolist()}")
        bad = (labels < 0) | (labels >= cfg.n_classes)
        if bool(bad.any()):
            raise DataError(f"labels outside [0, {cfg.n_classes}) (head.n_classes={cfg.n_classes}): "
                            f"{sorted(set(labels[bad].long().tolist()))[:10]}")
        return labels.long()
    if cfg.task == "binary":
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ConfigError(f"a binary head takes one label per row ([B]), got shape {tuple(labels.shape)}; "
                              "use head.task='multilabel' for several labels")
        labels = labels.float()
        bad = (labels < 0) | (labels > 1)
        if bool(bad.any()):
            raise DataError(f"binary labels must lie in [0, 1], got {sorted(set(labels[bad].tolist()))[:10]}")
        return labels
    # multilabel
    if labels.ndim == 1:
        raise ConfigError(f"class-index targets of shape [B] given to a multilabel head; it takes a 0/1 matrix "
                          f"[B, {cfg.n_classes}] (or set head.task='multiclass')")
    if labels.ndim != 2 or labels.shape[1] != cfg.n_classes:
        raise ConfigError(f"a multilabel head with n_classes={cfg.n_classes} takes labels [B, {cfg.n_classes}], "
                          f"got shape {tuple(labels.shape)}")
    labels = labels.float()
    bad = (labels < 0) | (labels > 1)
    if bool(bad.any()):
        raise DataError(f"multilabel targets must lie in [0, 1], got {sorted(set(labels[bad].tolist()))[:10]}")
    return labels


class SequenceClassifier(EncoderHeadModel):
    """``forward(input_ids [B, L]) -> logits`` (``[B, n_classes]``; binary: ``[B]``)."""

    kind = "classifier"
    config_class = HeadConfig

    def __init__(self, backbone: SequenceRecommender, cfg: HeadConfig, keep_scorer: bool = True):
        super().__init__(backbone, keep_scorer=keep_scorer)
        self.head_config = cfg
        self.pooling = build_pooling(cfg.pooling, self.hidden, cfg.cls_position, cfg.pool_heads)
        self.tower = ResidualMLP(self.pooling.out_dim, cfg.hidden_dims, cfg.out_dim, cfg.dropout, cfg.variant)
        if cfg.aux_head:  # deep supervision: the last layer itself must carry the label
            self.aux_pooling = build_pooling(cfg.pooling, self.hidden, cfg.cls_position, cfg.pool_heads)
            self.aux_out = nn.Linear(self.aux_pooling.out_dim, cfg.out_dim)
        weights = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, cfg: Optional[HeadConfig] = None,
                        expect_n_tokens: Optional[int] = None, expect_hidden: Optional[int] = None,
                        keep_scorer: bool = True) -> "SequenceClassifier":
        """With ``cfg``: a new classifier on the encoder saved in ``model_dir`` (checked
        against the expected vocabulary size / width when given), in train mode. Without:
        the fine-tuned classifier saved there by ``save_pretrained``, in eval mode."""
        if cfg is None:
            return cls._load_saved(model_dir)
        return cls._on_encoder(model_dir, cfg, expect_n_tokens, expect_hidden, keep_scorer)

    def _encode_rows(self, input_ids: Tensor):
        if self.head_config.append_mask:
            input_ids = self.with_mask(input_ids)
        return self.encode(input_ids, causal=False)

    def pooled(self, input_ids: Tensor) -> Tensor:
        out = self._encode_rows(input_ids)
        return self.pooling(out.sequence_output, out.padding_mask)

    def _shape(self, logits: Tensor) -> Tensor:
        return logits[:, 0] if self.head_config.task == "binary" else logits

    def forward(self, input_ids: Tensor) -> Tensor:
        return self._shape(self.tower(self.pooled(input_ids)))

    def forward_with_aux(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, aux_logits)`` from one encoder pass; the auxiliary classifier reads the
        pooled plain last encoder layer (no fusion, no reuse block, no tower)."""
        if not self.head_config.aux_head:
            raise ConfigError("this head has no auxiliary classifier: build it with head.aux_head=true")
        out = self._encode_rows(input_ids)
        logits = self.tower(self.pooling(out.sequence_output, out.padding_mask))
        aux = self.aux_out(self.aux_pooling(out.hidden_states[-1], out.padding_mask))
        return self._shape(logits), self._shape(aux)

    def check_labels(self, labels: Tensor) -> Tensor:
        return check_labels(labels, self.head_config)

    def loss(self, logits: Tensor, labels: Tensor, validate: bool = True) -> Tensor:
        cfg = self.head_config
        labels = check_labels(labels, cfg) if validate else labels
        labels = labels.to(logits.device)
        if cfg.task == "multiclass":
            if cfg.loss == "focal":
                return multiclass_focal_loss(logits, labels, cfg.focal_gamma, self.class_weights)
            return F.cross_entropy(logits, labels.long(), weight=self.class_weights)
        weight = None
        if self.class_weights is not None:
            if cfg.task == "binary":  # [negative, positive]
                weight = self.class_weights[0] * (1 - labels) + self.class_weights[1] * labels
            else:
                weight = self.class_weights  # per class, broadcast over rows
        gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
        alpha = cfg.focal_alpha if cfg.loss == "focal" else None
        return binary_focal_loss(logits, labels.to(logits.dtype), gamma, alpha, weight)

    @torch.no_grad()
    def predict_proba(self, input_ids: Tensor) -> Tensor:
        """Class probabilities (softmax rows / sigmoid per label / ``[B]`` for binary), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            logits = self(input_ids)
        finally:
            self.train(was_training)
        return logits.softmax(dim=-1) if self.head_config.task == "multiclass" else torch.sigmoid(logits)

    @torch.no_grad()
    def predict(self, input_ids: Tensor) -> Tensor:
        """Class indices (multiclass) or 0/1 decisions at probability 0.5."""
        proba = self.predict_proba(input_ids)
        return proba.argmax(dim=-1) if self.head_config.task == "multiclass" else (proba > 0.5).long()

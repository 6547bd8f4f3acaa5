"""Item objectives of the encoder, trained by :func:`recbert.training.loop.fit`:

* ``mlm``: cloze (BERT4Rec), bidirectional attention; masked positions are the targets;
* ``next_item``: causal (SASRec-style), a target at every position.

Both read the training sequences as windows of at most ``max_len`` (+1 for next-item)
events, batched by similar length in a seeded random order per epoch, and compute the
catalogue loss only where a target sits. ``OBJECTIVES`` is the registry: the config's
``objective`` choices and the builder derive from it."""

from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from recbert.config import StageConfig
from recbert.data.batches import left_pad, length_grouped_order, mask_tokens, next_item_pairs, training_windows
from recbert.data.sequences import Sequences
from recbert.data.vocab import N_SPECIAL
from recbert.model.recommender import SequenceRecommender
from recbert.training.loop import StepLoss
from recbert.training.losses import LossContext, build_loss, gather_targets


class WindowObjective:
    """Shared machinery: windows of the training sequences, length-grouped batches."""

    causal: bool = False
    min_len: int = 1

    def __init__(self, name: str, train: Sequences, max_len: int, n_tokens: int, stage: StageConfig, seed: int = 0,
                 window_stride: Optional[int] = None, device: torch.device | str = "cpu"):
        self.name = name
        self.stage = stage
        self.n_tokens = n_tokens
        self.span = max_len + 1 if self.causal else max_len
        self.items = train.items
        self.windows = training_windows(train, self.span, window_stride or max_len, min_len=self.min_len)
        self.batch_size = stage.batch_size
        self.steps_per_epoch = math.ceil(len(self.windows) / self.batch_size)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        n_items = n_tokens - N_SPECIAL
        counts = np.bincount(np.clip(train.items - N_SPECIAL, 0, None)[train.items >= N_SPECIAL], minlength=n_items)
        # its own generator: sampling negatives leaves the masking and batch order as they are
        self.loss_fn = build_loss(LossContext(stage, n_items, counts, torch.Generator().manual_seed(seed + 1), name))

    def __len__(self) -> int:
        return len(self.windows)

    def rows(self, epoch: int) -> Iterator[torch.Tensor]:
        order = length_grouped_order(self.windows.ends - self.windows.starts, self.batch_size, self.rng)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield torch.from_numpy(left_pad(self.items, self.windows.starts[idx], self.windows.ends[idx],
                                            self.span)).to(self.device)

    def item_loss(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor) -> StepLoss:
        out = model(inputs, causal=self.causal)
        hidden, targets = gather_targets(out.sequence_output, labels)
        return StepLoss(self.loss_fn(hidden, targets, model.scorer), n=len(inputs))


class MaskedItemObjective(WindowObjective):
    """Cloze: ``stage.mask_prob`` of the tokens (and ``last_item_mask_prob`` of the rows:
    only their last item) are predicted from both sides."""

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.rows(epoch):
            inputs, labels = mask_tokens(rows.cpu(), self.n_tokens, self.stage.mask_prob,
                                         self.stage.last_item_mask_prob, self.generator)
            yield inputs.to(self.device), labels.to(self.device)

    def loss(self, model: SequenceRecommender, batch) -> StepLoss:
        return self.item_loss(model, *batch)


class NextItemObjective(WindowObjective):
    """Causal next-item prediction with a target at every position."""

    causal = True
    min_len = 2

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.rows(epoch):
            yield next_item_pairs(rows)

    def loss(self, model: SequenceRecommender, batch) -> StepLoss:
        return self.item_loss(model, *batch)


OBJECTIVES: dict[str, type[WindowObjective]] = {"mlm": MaskedItemObjective, "next_item": NextItemObjective}


def build_objective(name: str, stage: StageConfig, model: SequenceRecommender, train: Sequences, seed: int = 0,
                    window_stride: Optional[int] = None, device: torch.device | str = "cpu") -> WindowObjective:
    """The objective ``stage.objective`` over ``train``, named ``name`` (the stage)."""
    return OBJECTIVES[stage.objective](name, train, model.config.max_len, model.config.n_tokens, stage, seed,
                                       window_stride, device)

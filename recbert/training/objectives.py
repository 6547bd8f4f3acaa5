"""Item objectives of the encoder, trained by :func:`recbert.training.loop.fit`:

* ``mlm``: cloze (BERT4Rec), bidirectional attention; masked positions are the targets;
* ``next_item``: causal (SASRec-style), a target at every position.

Both read the training sequences as windows of at most ``max_len`` (+1 for next-item)
events, batched by similar length in a seeded random order per epoch, and compute the
catalogue loss only where a target sits. Under distributed training the epoch's order and
its global batches are the same on every rank, and each rank trains on its share of every
global batch. ``OBJECTIVES`` is the registry: the config's ``objective`` choices and the
builder derive from it."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from recbert.config import StageConfig
from recbert.data.batches import (global_batch_bounds, left_pad, length_grouped_order, mask_tokens, next_item_pairs,
                                  training_windows)
from recbert.data.sequences import Sequences
from recbert.data.vocab import catalogue_size, item_index
from recbert.errors import ConfigError
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext, rank_seed
from recbert.training.distributed import unwrap
from recbert.training.loop import StepLoss
from recbert.training.losses import LossContext, build_loss, gather_targets


class WindowObjective:
    """Shared machinery: windows of the training sequences, length-grouped global batches
    of ``batch_size`` windows, of which this process (rank ``context.rank``) takes every
    ``world_size``-th row."""

    causal: bool = False
    min_len: int = 1

    def __init__(self, name: str, train: Sequences, max_len: int, n_tokens: int, stage: StageConfig, seed: int = 0,
                 window_stride: Optional[int] = None, device: torch.device | str = "cpu",
                 context: DistributedContext = DistributedContext(), hash_buckets: int = 0):
        self.name = name
        self.stage = stage
        self.n_tokens = n_tokens
        self.span = max_len + 1 if self.causal else max_len
        self.items = train.items
        self.windows = training_windows(train, self.span, window_stride or max_len, min_len=self.min_len)
        self.batch_size = stage.batch_size
        self.rank, self.world_size = context.rank, context.world_size
        if self.world_size > 1 and len(self.windows) < self.world_size:
            raise ConfigError(f"{name}: {len(self.windows)} training windows cannot be shared by {self.world_size} "
                              "processes; start fewer (torchrun --nproc_per_node) or train on more data")
        self.bounds = global_batch_bounds(len(self.windows), self.batch_size, self.world_size)
        self.steps_per_epoch = len(self.bounds)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)  # the batch order: the same on every rank
        self.generator = torch.Generator().manual_seed(rank_seed(seed, self.rank))
        self.n_items = n_items = catalogue_size(n_tokens, hash_buckets)
        items = item_index(train.items, n_items)
        counts = np.bincount(items[items >= 0], minlength=n_items)
        # its own generator: sampling negatives leaves the masking and batch order as they are
        negatives = torch.Generator().manual_seed(rank_seed(seed + 1, self.rank))
        self.loss_fn = build_loss(LossContext(stage, n_items, counts, negatives, name))

    def __len__(self) -> int:
        return len(self.windows)

    def batch_windows(self, epoch: int) -> Iterator[np.ndarray]:
        """The window indices this rank trains on at each step of epoch ``epoch``: its rows
        of each global batch (all of them in a single process)."""
        order = length_grouped_order(self.windows.ends - self.windows.starts, self.batch_size, self.rng)
        for start, stop in self.bounds:
            yield order[start:stop][self.rank::self.world_size]

    def rows(self, epoch: int) -> Iterator[torch.Tensor]:
        for idx in self.batch_windows(epoch):
            yield torch.from_numpy(left_pad(self.items, self.windows.starts[idx], self.windows.ends[idx],
                                            self.span)).to(self.device)

    def item_loss(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor) -> StepLoss:
        out = model(inputs, causal=self.causal)
        hidden, targets = gather_targets(out.sequence_output, labels, self.n_items)
        if targets.numel() == 0:  # every target is UNK or a hash bucket
            return StepLoss(out.sequence_output.sum() * 0.0, n=len(inputs))
        return StepLoss(self.loss_fn(hidden, targets, unwrap(model).scorer), n=len(inputs))

    def loss(self, model: SequenceRecommender, batch: tuple[torch.Tensor, torch.Tensor]) -> StepLoss:
        return self.item_loss(model, *batch)


class MaskedItemObjective(WindowObjective):
    """Cloze: ``stage.mask_prob`` of the tokens (and ``last_item_mask_prob`` of the rows:
    only their last item) are predicted from both sides."""

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.rows(epoch):
            inputs, labels = mask_tokens(rows.cpu(), self.n_tokens, self.stage.mask_prob,
                                         self.stage.last_item_mask_prob, self.generator)
            yield inputs.to(self.device), labels.to(self.device)


class NextItemObjective(WindowObjective):
    """Causal next-item prediction with a target at every position."""

    causal = True
    min_len = 2

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.rows(epoch):
            yield next_item_pairs(rows)


OBJECTIVES: dict[str, type[WindowObjective]] = {"mlm": MaskedItemObjective, "next_item": NextItemObjective}


def build_objective(name: str, stage: StageConfig, model: SequenceRecommender, train: Sequences, seed: int = 0,
                    window_stride: Optional[int] = None, device: torch.device | str = "cpu",
                    context: DistributedContext = DistributedContext()) -> WindowObjective:
    """The objective ``stage.objective`` over ``train``, named ``name`` (the stage), for
    the rank of ``context``."""
    return OBJECTIVES[stage.objective](name, train, model.config.max_len, model.config.n_tokens, stage, seed,
                                       window_stride, device, context, model.config.hash_buckets)

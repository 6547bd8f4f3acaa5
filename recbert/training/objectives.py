"""Item objectives of the encoder, trained by :func:`recbert.training.loop.fit`:

* ``mlm``: cloze (BERT4Rec), bidirectional attention; masked positions are the targets;
* ``next_item``: causal (SASRec-style), a target at every position;
* ``mlm_attributes``: cloze plus item-attribute prediction (:mod:`recbert.training.attributes`);
* ``next_item_attributes``: next-item plus the same attribute prediction, causal;
* ``next_item_contrastive``: next-item plus DuoRec's same-target InfoNCE
  (:mod:`recbert.training.contrastive`);
* ``next_item_augmented``: next-item plus CL4SRec's InfoNCE between two augmented views of
  each window (:mod:`recbert.data.augmentations`).

Both read the training sequences as windows of at most ``max_len`` (+1 for next-item)
events, batched by similar length in a seeded random order per epoch, from memory or
streamed from sequence shards (:mod:`recbert.data.window_sources`), and compute the
catalogue loss only where a target sits. Under distributed training every rank takes the
same number of steps, each on its own share of the epoch's windows. ``OBJECTIVES`` is the registry: the config's ``objective`` choices and the
builder derive from it."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from recbert.config import DataConfig, ModelConfig, StageConfig
from recbert.data.augmentations import augment
from recbert.data.batches import mask_tokens, next_item_pairs
from recbert.data.sequences import Sequences
from recbert.data.vocab import catalogue_size
from recbert.data.window_sources import TrainData, window_source
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext, rank_seed
from recbert.errors import ConfigError
from recbert.training.attributes import attribute_losses, batch_items
from recbert.training.contrastive import SameTargetPrefixes, info_nce
from recbert.training.distributed import unwrap
from recbert.training.loop import StepLoss
from recbert.training.losses import LossContext, build_loss, gather_targets, real_targets


class WindowObjective:
    """Shared machinery: the training windows of this process (rank ``context.rank``) from
    a :class:`~recbert.data.window_sources.WindowSource` over ``train`` (sequences in memory
    or streamed shards), and the catalogue loss of their targets."""

    causal: bool = False
    min_len: int = 1

    def __init__(self, name: str, train: TrainData, max_len: int, n_tokens: int, stage: StageConfig, seed: int = 0,
                 data: DataConfig = DataConfig(), device: torch.device | str = "cpu",
                 context: DistributedContext = DistributedContext(), hash_buckets: int = 0):
        self.name = name
        self.stage = stage
        self.n_tokens = n_tokens
        self.span = max_len + 1 if self.causal else max_len
        self.source = window_source(train, self.span, data.window_stride or max_len, self.min_len, stage.batch_size,
                                    seed, context.rank, context.world_size, name, data)
        self.steps_per_epoch = self.source.steps_per_epoch
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(rank_seed(seed, context.rank))
        self.n_items = n_items = catalogue_size(n_tokens, hash_buckets)
        # its own generator: sampling negatives leaves the masking and batch order as they are
        self.negatives = negatives = torch.Generator().manual_seed(rank_seed(seed + 1, context.rank))
        self.loss_fn = build_loss(LossContext(stage, n_items, self.source.item_counts(n_items), negatives, name))

    def __len__(self) -> int:
        return len(self.source)

    def state_dict(self) -> dict:
        """What the steps still to come draw from: the masking, negatives and batch-order
        random states (a checkpoint's part of the objective)."""
        return {"masking": self.generator.get_state(), "negatives": self.negatives.get_state(),
                "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["masking"])
        self.negatives.set_state(state["negatives"])
        self.source.load_state_dict(state["source"])

    @classmethod
    def check(cls, name: str, config: ModelConfig) -> None:
        """Refuse a model this objective cannot train (a ConfigError naming stage ``name``)."""

    def rows(self, epoch: int) -> Iterator[torch.Tensor]:
        for rows in self.source.rows(epoch):
            yield rows.to(self.device)

    def item_loss(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor) -> StepLoss:
        return self.loss_of_outputs(model, inputs, labels, model(inputs, causal=self.causal).sequence_output)

    def loss_of_outputs(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor,
                        outputs: torch.Tensor) -> StepLoss:
        """The loss of the batch's sequence outputs ``outputs`` at its target positions."""
        hidden, targets = gather_targets(outputs, labels, self.n_items)
        if targets.numel() == 0:  # every target is UNK or a hash bucket
            return StepLoss(outputs.sum() * 0.0, n=len(inputs))
        return self.target_loss(model, inputs, labels, hidden, targets)

    def target_loss(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor,
                    hidden: torch.Tensor, targets: torch.Tensor) -> StepLoss:
        """The loss at the batch's target positions (``hidden`` outputs, ``targets`` items)."""
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


class AttributeTargets:
    """The item-attribute objectives of :mod:`recbert.training.attributes` beside an item
    objective's catalogue loss (its part named ``next_item`` or ``cloze`` after the objective's
    attention): each target position's output predicts the target item's attributes, each
    batch item's embedding its own; weighted by ``stage.attribute_weight``. Needs item side
    features."""

    @classmethod
    def check(cls, name: str, config: ModelConfig) -> None:
        if not config.feature_cardinalities:
            objective = next(key for key, value in OBJECTIVES.items() if value is cls)
            raise ConfigError(f"{name}.objective = {objective!r} needs item side features: set "
                              "data.item_features and data.item_feature_columns (e.g. the items.parquet of "
                              "`recbert import s3rec --attributes`)")

    def target_loss(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor,
                    hidden: torch.Tensor, targets: torch.Tensor) -> StepLoss:
        core = unwrap(model)
        items = self.loss_fn(hidden, targets, core.scorer)
        parts = attribute_losses(core.embeddings, hidden, targets, batch_items(inputs, labels, self.n_items))
        total = items + self.stage.attribute_weight * (parts["masked_attributes"] + parts["item_attributes"])
        return StepLoss(total, n=len(inputs), parts={"next_item" if self.causal else "cloze": items.detach(),
                                                     **{k: v.detach() for k, v in parts.items()}})


class MaskedItemAttributeObjective(AttributeTargets, MaskedItemObjective):
    """Cloze plus the item-attribute objectives (S3-Rec's MAP and AAP): a masked position
    predicts the hidden item's attributes."""


class NextItemAttributeObjective(AttributeTargets, NextItemObjective):
    """Causal next-item prediction plus the item-attribute objectives: each position
    predicts the attributes of the item that comes next (the causal counterpart of
    ``mlm_attributes``, with the attention pattern of next-item fine-tuning)."""


class InfoNCETerm:
    """The step loss of the contrastive objectives: next-item loss at the windows' outputs
    plus ``stage.contrastive_weight`` x the InfoNCE of the views ``a`` / ``b``."""

    def with_info_nce(self, model: SequenceRecommender, inputs: torch.Tensor, labels: torch.Tensor,
                      outputs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor) -> StepLoss:
        next_item = self.loss_of_outputs(model, inputs, labels, outputs).total
        cl = info_nce(a, b, targets, self.stage.contrastive_temperature, self.stage.contrastive_similarity)
        return StepLoss(next_item + self.stage.contrastive_weight * cl, n=len(inputs),
                        parts={"next_item": next_item.detach(), "contrastive": cl.detach()})


class NextItemContrastiveObjective(InfoNCETerm, NextItemObjective):
    """Next-item prediction plus ``stage.contrastive_weight`` x the InfoNCE between each
    window's last-position output and that of a same-target prefix
    (:mod:`recbert.training.contrastive`); the prefixes are read from sequences in memory."""

    def __init__(self, name: str, train: TrainData, max_len: int, n_tokens: int, stage: StageConfig, seed: int = 0,
                 data: DataConfig = DataConfig(), device: torch.device | str = "cpu",
                 context: DistributedContext = DistributedContext(), hash_buckets: int = 0):
        if not isinstance(train, Sequences):
            raise ConfigError(f"{name}.objective = 'next_item_contrastive' draws same-target prefixes from "
                              "sequences in memory: unset data.shards (streaming), or use objective = 'next_item'")
        super().__init__(name, train, max_len, n_tokens, stage, seed, data, device, context, hash_buckets)
        self.prefixes = SameTargetPrefixes(train, max_len)
        self.positives = torch.Generator().manual_seed(rank_seed(seed + 2, context.rank))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "positives": self.positives.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.positives.set_state(state["positives"])

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(inputs, labels, keep, positives)``: ``keep`` marks the rows whose last target
        is a real item, ``positives`` their same-target prefixes."""
        for rows in self.rows(epoch):
            inputs, labels = next_item_pairs(rows)
            last = labels[:, -1]
            keep = real_targets(last, self.n_items)
            drawn = self.prefixes.draw(last[keep].cpu().numpy(), self.positives, width=inputs.shape[1])
            yield inputs, labels, keep, torch.from_numpy(drawn).to(inputs.device)

    def loss(self, model: SequenceRecommender, batch: tuple[torch.Tensor, ...]) -> StepLoss:
        inputs, labels, keep, positives = batch
        if int(keep.sum()) < 2:  # no pair to contrast with another
            return self.item_loss(model, inputs, labels)
        # one forward pass over the windows and their prefixes (independent dropout masks per
        # row); the prefixes are at most as wide as the windows, and left-padded to their width
        n, width = inputs.shape
        both = torch.cat([inputs, F.pad(positives, (width - positives.shape[1], 0))])
        states = model(both, causal=True).sequence_output
        return self.with_info_nce(model, inputs, labels, states[:n], states[:n][keep, -1], states[n:, -1],
                                  labels[keep, -1])


class NextItemAugmentedObjective(InfoNCETerm, NextItemObjective):
    """CL4SRec: next-item prediction plus ``stage.contrastive_weight`` x the InfoNCE between
    two augmented views of each window (crop / mask / reorder of its input events,
    :func:`recbert.data.augmentations.augment`), each view represented by its causal
    output at the last position; the other windows' views are the negatives. The views are
    drawn from the objective's own generator, so a resumed stage draws them again."""

    def __init__(self, name: str, train: TrainData, max_len: int, n_tokens: int, stage: StageConfig, seed: int = 0,
                 data: DataConfig = DataConfig(), device: torch.device | str = "cpu",
                 context: DistributedContext = DistributedContext(), hash_buckets: int = 0):
        super().__init__(name, train, max_len, n_tokens, stage, seed, data, device, context, hash_buckets)
        self.views = torch.Generator().manual_seed(rank_seed(seed + 3, context.rank))
        self.ratios = {"crop": stage.crop_keep, "mask": stage.mask_share, "reorder": stage.reorder_share}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "views": self.views.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.views.set_state(state["views"])

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(inputs, labels, views)``: ``views`` ``[2B, W]`` holds two augmentations of each
        row of ``inputs``."""
        for rows in self.rows(epoch):
            inputs, labels = next_item_pairs(rows)
            cpu = inputs.cpu()
            views = torch.cat([augment(cpu, self.stage.augmentations, self.ratios, self.views) for _ in range(2)])
            yield inputs, labels, views.to(inputs.device)

    def loss(self, model: SequenceRecommender, batch: tuple[torch.Tensor, ...]) -> StepLoss:
        inputs, labels, views = batch
        n = len(inputs)
        if n < 2:  # no other window to contrast with
            return self.item_loss(model, inputs, labels)
        states = model(torch.cat([inputs, views]), causal=True).sequence_output  # one pass, own dropout per row
        rows = torch.arange(n, device=inputs.device)  # each view's only positive is its twin
        return self.with_info_nce(model, inputs, labels, states[:n], states[n:2 * n, -1], states[2 * n:, -1], rows)


OBJECTIVES: dict[str, type[WindowObjective]] = {"mlm": MaskedItemObjective, "next_item": NextItemObjective,
                                                "mlm_attributes": MaskedItemAttributeObjective,
                                                "next_item_attributes": NextItemAttributeObjective,
                                                "next_item_contrastive": NextItemContrastiveObjective,
                                                "next_item_augmented": NextItemAugmentedObjective}


def build_objective(name: str, stage: StageConfig, model: SequenceRecommender, train: TrainData, seed: int = 0,
                    data: DataConfig = DataConfig(), device: torch.device | str = "cpu",
                    context: DistributedContext = DistributedContext()) -> WindowObjective:
    """The objective ``stage.objective`` over ``train``, named ``name`` (the stage), for
    the rank of ``context``."""
    OBJECTIVES[stage.objective].check(name, model.config)
    return OBJECTIVES[stage.objective](name, train, model.config.max_len, model.config.n_tokens, stage, seed,
                                       data, device, context, model.config.hash_buckets)

"""Item-attribute objectives (after S3-Rec's AAP and MAP), added to the item loss by the
``mlm_attributes`` (cloze) and ``next_item_attributes`` (causal) objectives
(:mod:`recbert.training.objectives`):

* masked attribute prediction: the encoder's output at a target position (a masked one, or
  the one before the next item) predicts the attributes of the target item (what the
  context says about it);
* item attribute prediction: each batch item's embedding predicts its own attributes.

Scores are dot products with the attribute embeddings the encoder's input already adds
to the item (``SequenceEmbeddings.features``): no parameters of their own, nothing extra to
save. The loss is a softmax over the feature's values against the item's values spread
evenly (multi-label cross-entropy), on the same scale as the catalogue softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbert.data.vocab import N_SPECIAL


def attribute_loss(vectors: Tensor, values: Tensor, embedding: nn.Embedding) -> Tensor:
    """Mean multi-label cross-entropy of ``vectors [N, H]`` against their value indices
    ``values [N, W]`` (0 = none) of one feature whose value ``v`` has the vector
    ``embedding.weight[v]``; rows without a value are left out (0 when none has one)."""
    present = values > 0
    keep = present.any(dim=1)
    if not keep.any():
        return vectors.sum() * 0.0
    vectors, values, present = vectors[keep], values[keep], present[keep]
    logits = vectors @ embedding.weight[1:].T  # value v is column v - 1
    target = torch.zeros_like(logits)
    rows = torch.arange(len(values), device=values.device)[:, None].expand_as(values)
    target[rows[present], values[present] - 1] = 1.0
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def batch_items(inputs: Tensor, labels: Tensor, n_items: int) -> Tensor:
    """The distinct real items (not special tokens, not hash buckets) of a cloze batch."""
    tokens = torch.cat([inputs.flatten(), labels.flatten()])
    return torch.unique(tokens[(tokens >= N_SPECIAL) & (tokens < N_SPECIAL + n_items)])


def attribute_losses(embeddings: nn.Module, hidden: Tensor, targets: Tensor, items: Tensor) -> dict[str, Tensor]:
    """``{masked_attributes, item_attributes}``, each summed over the model's side features:
    ``hidden [N, H]`` are the encoder outputs at the masked positions whose items are
    ``targets [N]``; ``items`` the batch's items (:func:`batch_items`)."""
    masked = item = hidden.sum() * 0.0
    for name, emb in embeddings.features.items():
        table = getattr(embeddings, f"feature_table_{name}")
        masked = masked + attribute_loss(hidden, table[targets], emb)
        item = item + attribute_loss(embeddings.item(items), table[items], emb)
    return {"masked_attributes": masked, "item_attributes": item}

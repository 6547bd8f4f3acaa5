"""Contrastive sequence learning beside next-item training (DuoRec: Qiu et al., "Contrastive
Learning for Representation Degeneration Problem in Sequential Recommendation", WSDM 2022),
the parts of the ``next_item_contrastive`` objective (:mod:`recbert.training.objectives`).

The objective is causal next-item prediction (as ``next_item``) plus an InfoNCE term on
sequence representations: the encoder output at a window's last position, the one that
predicts the window's last item. Each window has two views:

* the window itself, from the next-item forward pass (under its dropout masks);
* a *same-target* prefix (DuoRec's supervised positive): another training prefix, from any
  user, that is followed by the same item, cut to the batch's width (windows are batched by
  similar length: the positive is no longer than the longest window beside it, which keeps
  the extra rows as cheap as the batch's own) and encoded under other dropout masks in the
  same forward pass. It is drawn uniformly among every place
  the item follows a prefix in the training sequences (:class:`SameTargetPrefixes`), the
  window's own place included: for an item that follows a prefix once, the second view is
  the window itself under other dropout masks, DuoRec's unsupervised (model-level)
  augmentation.

The ``2B`` views of a batch are scored against each other by dot product over a
temperature (:func:`info_nce`); each view's positive is its twin and its negatives the
other views, except those of windows with the same target (false negatives: masked, as in
supervised contrastive learning; DuoRec's default keeps them as negatives). The step's loss is ``next-item loss + contrastive_weight * InfoNCE``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recbert.data.batches import left_pad
from recbert.data.sequences import Sequences


def info_nce(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, temperature: float,
             similarity: str = "dot") -> torch.Tensor:
    """Symmetric InfoNCE over the ``2B`` views ``[a; b]`` (``[B, H]`` each; row ``i`` of
    ``a`` and of ``b`` are a pair): each view is classified against every other view of
    the batch, its twin being the right class; views of other rows with the same
    ``targets`` (``[B]``) are left out of the denominator. ``similarity``: ``dot`` (DuoRec's
    and CL4SRec's default) or ``cosine`` (the views L2-normalised first, as SimCLR: the term
    cannot then be lowered by growing the outputs' norms, which the item scores also read)."""
    n = len(a)
    z = torch.cat([a, b])
    if similarity == "cosine":
        z = F.normalize(z, dim=1)
    sim = (z @ z.T) / temperature
    t = torch.cat([targets, targets])
    rows = torch.arange(2 * n, device=z.device)
    twin = (rows + n) % (2 * n)
    excluded = t[:, None] == t[None, :]  # self, twin and same-target views
    excluded[rows, twin] = False
    return F.cross_entropy(sim.masked_fill(excluded, float("-inf")), twin)


class SameTargetPrefixes:
    """Every place where an item follows a prefix in ``train`` (position > 0 of a
    sequence), grouped by item token: :meth:`draw` gives, for each target, the ``max_len``
    events before one of its places, drawn uniformly."""

    def __init__(self, train: Sequences, max_len: int):
        self.items, self.max_len = train.items, max_len
        self.start_of = np.repeat(train.offsets[:-1], train.lengths)  # flat position -> its sequence's start
        places = np.flatnonzero(np.arange(len(train.items)) > self.start_of)
        self.places = places[np.argsort(train.items[places], kind="stable")]
        counts = np.bincount(train.items[self.places], minlength=int(train.items.max(initial=0)) + 1)
        self.first = np.concatenate([[0], np.cumsum(counts)])  # places of token t: first[t]:first[t + 1]

    def count(self, targets: np.ndarray) -> np.ndarray:
        """How many places each target token has (0 for a token never after a prefix)."""
        known = targets < len(self.first) - 1
        t = np.where(known, targets, 0)
        return np.where(known, self.first[t + 1] - self.first[t], 0)

    def draw(self, targets: np.ndarray, generator: torch.Generator, width: int | None = None) -> np.ndarray:
        """``[B, w]`` int64 left-padded rows: the prefix (at most ``width`` events, default
        ``max_len``) before a uniformly drawn place of each target. Every target must have a
        place."""
        counts = self.count(targets)
        if (counts == 0).any():
            raise ValueError(f"token {int(targets[counts == 0][0])} never follows a prefix in the training sequences")
        u = torch.rand(len(targets), generator=generator, dtype=torch.float64).numpy()
        ends = self.places[self.first[targets] + np.minimum(np.floor(u * counts).astype(np.int64), counts - 1)]
        starts = np.maximum(self.start_of[ends], ends - min(self.max_len, width or self.max_len))
        return left_pad(self.items, starts, ends, int((ends - starts).max(initial=1)))

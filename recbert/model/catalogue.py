"""Scoring the item catalogue a chunk of items at a time, in bounded memory.

Full ranking and top-k over a catalogue of ``n_items`` would hold a ``[users, n_items]``
score matrix (4 GB of float32 for 1024 users and 1M items). Instead the catalogue is
cut into chunks of at most ``chunk`` items (:func:`item_chunks`), so memory is
``users x chunk`` whatever the catalogue's size. This module holds the pieces that
do not depend on how scores are computed: the chunk size rule, the chunks, the
items each user has (:class:`ItemSets`, masked a chunk at a time) and the running
top-k (:func:`merge_top_k`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from recbert.data.vocab import item_index

SCORE_BUDGET_BYTES = 256 * 2**20  # float32 scores of one chunk, for every user of a batch


def item_chunk_size(users: int, chunk: Optional[int] = None) -> int:
    """Items per chunk: ``chunk`` when given, else the most items whose float32 scores
    for ``users`` users fit in :data:`SCORE_BUDGET_BYTES` (65,536 for 1024 users)."""
    if chunk is not None:
        return chunk
    return max(1, SCORE_BUDGET_BYTES // (4 * max(users, 1)))


def item_chunks(n_items: int, chunk: int) -> list[slice]:
    """The catalogue ``0 .. n_items - 1`` as consecutive slices of at most ``chunk`` items."""
    return [slice(lo, min(lo + chunk, n_items)) for lo in range(0, n_items, chunk)]


@dataclass(frozen=True, eq=False)  # tensors: no element-wise __eq__
class ItemSets:
    """A set of catalogue items (0-based item indices) for each of ``n_rows`` rows,
    e.g. every user's history, held as ``(row, item)`` pairs rather than a
    ``[n_rows, n_items]`` mask; :meth:`mask` builds the mask of one chunk."""

    rows: Tensor  # [pairs] int64: the row of each pair
    items: Tensor  # [pairs] int64: its item (an item may repeat within a row)
    n_rows: int
    n_items: int

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, lengths: np.ndarray, n_items: int) -> "ItemSets":
        """From rows of tokens laid end to end (row ``i`` has ``lengths[i]`` of them);
        special tokens ([UNK], ...) and hash buckets are not catalogue items and are left out."""
        rows = np.repeat(np.arange(len(lengths)), lengths)
        items = item_index(tokens, n_items)
        keep = items >= 0
        return cls(torch.from_numpy(rows[keep]), torch.from_numpy(items[keep]), len(lengths), n_items)

    @classmethod
    def from_mask(cls, mask: Tensor) -> "ItemSets":
        """From a ``[n_rows, n_items]`` bool mask."""
        rows, items = mask.nonzero(as_tuple=True)
        return cls(rows, items, mask.shape[0], mask.shape[1])

    def mask(self, items: slice = slice(None)) -> Tensor:
        """``[n_rows, len(items)]`` bool: True where the row holds the item, for a slice
        of the catalogue (all of it by default)."""
        lo, hi, _ = items.indices(self.n_items)
        inside = (self.items >= lo) & (self.items < hi)
        out = torch.zeros(self.n_rows, hi - lo, dtype=torch.bool)
        out[self.rows[inside], self.items[inside] - lo] = True
        return out

    def contains(self, items: Tensor) -> Tensor:
        """``[n_rows, m]`` bool: whether each row holds each of its own ``items`` ``[n_rows, m]``."""
        asked = torch.arange(self.n_rows)[:, None] * self.n_items + items
        return torch.isin(asked, self.rows * self.n_items + self.items)

    def distinct(self) -> "ItemSets":
        """The same sets with each ``(row, item)`` pair once."""
        keys = torch.unique(self.rows * self.n_items + self.items)
        return ItemSets(keys // self.n_items, keys % self.n_items, self.n_rows, self.n_items)

    def take(self, rows: Tensor) -> "ItemSets":
        """The sets of ``rows`` (distinct row indices), in that order."""
        new_row = torch.full((self.n_rows,), -1, dtype=torch.long)
        new_row[rows] = torch.arange(len(rows))
        moved = new_row[self.rows]
        kept = moved >= 0
        return ItemSets(moved[kept], self.items[kept], len(rows), self.n_items)

    def with_items(self, items: Tensor) -> "ItemSets":
        """These sets with one more item per row (``items`` ``[n_rows]``)."""
        return ItemSets(torch.cat([self.rows, torch.arange(self.n_rows)]), torch.cat([self.items, items]),
                        self.n_rows, self.n_items)


def merge_top_k(best: tuple[Tensor, Tensor], scores: Tensor, start: int, k: int) -> tuple[Tensor, Tensor]:
    """``(scores, items)`` ``[B, <= k]``: the ``k`` best per row of ``best`` (the same pair
    from earlier chunks) and of a chunk's ``scores`` ``[B, chunk]`` (items ``start``,
    ``start + 1``, ...), best first. Ties come in item order, as a stable sort of the
    whole row would give them: earlier chunks hold lower items and come first."""
    values = torch.cat([best[0], scores], dim=1)
    chunk_items = torch.arange(start, start + scores.shape[1]).expand(len(scores), -1)
    items = torch.cat([best[1], chunk_items], dim=1)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values[:, :k], items.gather(1, order[:, :k])

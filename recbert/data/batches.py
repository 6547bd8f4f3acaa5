"""From sequences to padded tensors: training windows, left padding, MLM masking.

Rows are LEFT-padded: the most recent item always sits in the last column, so
the position embedding of "the latest event" is the same for every user, and
a batch is trimmed to its longest row by dropping leading columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recbert.data.sequences import Sequences
from recbert.data.vocab import MASK, N_SPECIAL, PAD


@dataclass
class Windows:
    """Flat ``[start, end)`` spans into ``Sequences.items``, one per training sample."""

    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def training_windows(seqs: Sequences, span: int, stride: int, min_len: int = 1) -> Windows:
    """Windows of at most ``span`` events ending at the last event, then every
    ``stride`` events further back, so long histories are used in full."""
    starts, ends = seqs.offsets[:-1], seqs.offsets[1:]
    lengths = ends - starts
    n_windows = np.maximum(1, -(-(lengths - span) // stride) + 1)  # ceil((len - span) / stride) + 1
    n_windows = np.where(lengths <= span, 1, n_windows)
    user = np.repeat(np.arange(len(lengths)), n_windows)
    k = np.arange(len(user)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    w_end = ends[user] - k * stride
    w_start = np.maximum(starts[user], w_end - span)
    keep = (w_end - w_start) >= min_len
    return Windows(w_start[keep], w_end[keep])


def length_grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                         group_batches: int = 64) -> np.ndarray:
    """A random permutation in which each run of ``group_batches`` batches is
    sorted by length, so that batches hold rows of similar length and little
    padding; batch order is shuffled afterwards. Randomness stays per epoch."""
    order = rng.permutation(len(lengths))
    group = batch_size * group_batches
    for lo in range(0, len(order), group):
        chunk = order[lo:lo + group]
        order[lo:lo + group] = chunk[np.argsort(-lengths[chunk], kind="stable")]
    n_full = len(order) // batch_size  # the short remainder batch stays last, so that
    batches = [order[b * batch_size:(b + 1) * batch_size] for b in rng.permutation(n_full)]
    batches.append(order[n_full * batch_size:])  # slicing every batch_size rows keeps batches whole
    return np.concatenate(batches)


def global_batch_bounds(n_rows: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each global batch of an epoch's ``n_rows``: every
    ``batch_size`` rows, the last one shorter; with ``world_size`` ranks sharing each
    batch, a last batch of fewer than ``world_size`` rows joins the one before it, so
    that every rank gets rows at every step."""
    bounds = [(lo, min(lo + batch_size, n_rows)) for lo in range(0, n_rows, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2:] = [(bounds[-2][0], n_rows)]
    return bounds


def concat_rows(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, lengths)``: the int64 rows laid end to end, and each row's length."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    tokens = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    return tokens, lengths


def left_pad(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """``[len(starts), w]`` int64 rows holding the last ``width`` items of each span,
    left-padded with PAD; ``w`` is the longest span (capped at ``width``)."""
    lengths = np.minimum(ends - starts, width)
    w = max(int(lengths.max(initial=0)), 1)
    if len(items) == 0:  # every span is empty
        return np.full((len(starts), w), PAD, dtype=np.int64)
    col = np.arange(w)[None, :]
    src = ends[:, None] - w + col
    valid = col >= (w - lengths)[:, None]
    out = np.where(valid, items[np.where(valid, src, 0)], PAD)
    return out.astype(np.int64)


def pad_sequences(seqs: Sequences, width: int, append_mask: bool = False) -> np.ndarray:
    """Every user's history as a left-padded row; with ``append_mask`` the row
    ends with [MASK] (the slot whose output scores the next item)."""
    starts, ends = seqs.offsets[:-1], seqs.offsets[1:]
    if not append_mask:
        return left_pad(seqs.items, starts, ends, width)
    rows = left_pad(seqs.items, starts, ends, width - 1)
    return np.concatenate([rows, np.full((len(rows), 1), MASK, dtype=np.int64)], axis=1)


def mask_tokens(
    tokens: torch.Tensor,
    n_tokens: int,
    mask_prob: float,
    last_item_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cloze masking of left-padded ``tokens``.

    Each real token is chosen with ``mask_prob``; a chosen token becomes [MASK]
    80% of the time, a random item 10%, and stays 10%. Every row gets at least
    one target (its last item when nothing was drawn). A share ``last_item_prob``
    of rows instead has only its last item masked (always [MASK]), matching how
    the model is used to predict the next item. PAD is never chosen.

    Returns ``(inputs, labels)`` with labels = original token at targets, PAD elsewhere.
    """
    real = tokens != PAD
    shape = tokens.shape
    chosen = (torch.rand(shape, generator=generator) < mask_prob) & real
    last_only = torch.rand(shape[0], generator=generator) < last_item_prob
    none = ~chosen.any(dim=1)
    last_col = torch.zeros(shape, dtype=torch.bool)
    last_col[:, -1] = True
    pick_last = (last_only | none)[:, None]
    chosen = torch.where(pick_last, last_col & real, chosen)

    roll = torch.rand(shape, generator=generator)
    to_mask = chosen & ((roll < 0.8) | pick_last)
    to_random = chosen & ~pick_last & (roll >= 0.8) & (roll < 0.9)
    random_items = torch.randint(N_SPECIAL, n_tokens, shape, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(tokens, MASK), tokens)
    inputs = torch.where(to_random, random_items, inputs)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, PAD))
    return inputs, labels


def next_item_pairs(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal next-item samples from left-padded rows of ``max_len + 1`` events:
    inputs are all but the last column, labels are the row shifted by one;
    a label is PAD where the input is PAD."""
    inputs, labels = rows[:, :-1], rows[:, 1:]
    labels = torch.where(inputs == PAD, torch.zeros_like(labels), labels)
    return inputs.contiguous(), labels.contiguous()

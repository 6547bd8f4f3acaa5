"""Training windows, left padding, length-grouped order, MLM masking statistics
and next-item pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbert.data.batches import (
    left_pad,
    length_grouped_order,
    mask_tokens,
    next_item_pairs,
    pad_sequences,
    training_windows,
)
from recbert.data.sequences import Sequences
from recbert.data.vocab import MASK, N_SPECIAL, PAD


def seqs_from_lengths(lengths) -> Sequences:
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # token = flat position + N_SPECIAL: every position is identifiable by its token
    return Sequences(np.arange(len(lengths)), np.arange(offsets[-1], dtype=np.int64) + N_SPECIAL, offsets)


@pytest.mark.parametrize("max_len, seed", [(1, 0), (3, 1), (7, 2), (50, 3)])
def test_next_item_windows_cover_every_target_exactly_once(max_len, seed):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(1, 4 * max_len + 5, 300), [1, 2, max_len, max_len + 1, max_len + 2,
                                                                      2 * max_len + 1, 3 * max_len + 1]])
    seqs = seqs_from_lengths(lengths)
    w = training_windows(seqs, span=max_len + 1, stride=max_len, min_len=2)
    assert ((w.ends - w.starts) <= max_len + 1).all()
    assert ((w.ends - w.starts) >= 2).all()
    user_of = np.repeat(np.arange(len(lengths)), lengths)
    # every window lies inside one user's sequence
    assert (user_of[w.starts] == user_of[w.ends - 1]).all()

    # through the real batch path: left-pad to max_len + 1, cut into next-item pairs
    rows = torch.from_numpy(left_pad(seqs.items, w.starts, w.ends, max_len + 1))
    inputs, labels = next_item_pairs(rows)
    assert inputs.shape[1] <= max_len
    targets = labels[labels != PAD].numpy() - N_SPECIAL  # flat positions used as targets
    counts = np.bincount(targets, minlength=len(seqs.items))
    first = seqs.offsets[:-1]
    expected = np.ones(len(seqs.items), dtype=np.int64)
    expected[first] = 0  # a user's first event is never a next-item target
    np.testing.assert_array_equal(counts, expected)
    # every label's input is its direct predecessor in the same user's sequence
    pairs = (labels != PAD)
    assert (labels[pairs] - inputs[pairs] == 1).all()
    assert (user_of[(labels[pairs] - N_SPECIAL).numpy()] == user_of[(inputs[pairs] - N_SPECIAL).numpy()]).all()


def test_windows_cover_every_position_for_mlm_spans():
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 40, 200)
    seqs = seqs_from_lengths(lengths)
    w = training_windows(seqs, span=10, stride=10)
    covered = np.zeros(len(seqs.items), dtype=np.int64)
    for s, e in zip(w.starts, w.ends):
        covered[s:e] += 1
    assert (covered == 1).all()
    # the first window of each user ends at its last event
    last_ends = seqs.offsets[1:]
    assert set(last_ends.tolist()) <= set(w.ends.tolist())


def test_training_windows_small_case():
    # next-item spans overlap by one event (span = stride + 1)
    w = training_windows(seqs_from_lengths([7, 2]), span=4, stride=3)
    assert list(zip(w.starts.tolist(), w.ends.tolist())) == [(3, 7), (0, 4), (7, 9)]
    # MLM spans tile the history from its end; a 1-event leftover is dropped by min_len
    seqs = seqs_from_lengths([9, 2])
    w = training_windows(seqs, span=4, stride=4)
    assert list(zip(w.starts.tolist(), w.ends.tolist())) == [(5, 9), (1, 5), (0, 1), (9, 11)]
    w = training_windows(seqs, span=4, stride=4, min_len=2)
    assert list(zip(w.starts.tolist(), w.ends.tolist())) == [(5, 9), (1, 5), (9, 11)]


def test_left_pad_right_aligns_and_pads_with_zero():
    items = np.array([11, 12, 13, 14, 15, 16], dtype=np.int64)
    starts, ends = np.array([0, 3, 5, 2]), np.array([3, 5, 6, 2])
    out = left_pad(items, starts, ends, width=4)
    assert out.dtype == np.int64
    assert out.tolist() == [[11, 12, 13], [0, 14, 15], [0, 0, 16], [0, 0, 0]]
    # width caps and keeps the most recent items
    out = left_pad(items, np.array([0, 4]), np.array([6, 6]), width=3)
    assert out.tolist() == [[14, 15, 16], [0, 15, 16]]
    assert left_pad(items, np.array([1]), np.array([1]), width=3).tolist() == [[0]]


def test_pad_sequences_appends_mask():
    seqs = seqs_from_lengths([5, 1])
    rows = pad_sequences(seqs, width=4, append_mask=True)
    assert rows.tolist() == [[5, 6, 7, MASK], [0, 0, 8, MASK]]
    assert pad_sequences(seqs, width=4).tolist() == [[4, 5, 6, 7], [0, 0, 0, 8]]


@pytest.mark.parametrize("n, batch_size", [(1000, 32), (1024, 32), (5, 8), (0, 4)])
def test_length_grouped_order_is_a_permutation(n, batch_size):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, n)
    order = length_grouped_order(lengths, batch_size, rng, group_batches=4)
    assert sorted(order.tolist()) == list(range(n))


def test_length_grouped_order_batches_are_length_sorted_and_random():
    lengths = np.random.default_rng(1).integers(1, 200, 32 * 40)
    a = length_grouped_order(lengths, 32, np.random.default_rng(10), group_batches=8)
    b = length_grouped_order(lengths, 32, np.random.default_rng(11), group_batches=8)
    assert not np.array_equal(a, b)
    for lo in range(0, len(a), 32):
        batch = lengths[a[lo:lo + 32]]
        assert (np.diff(batch) <= 0).all()
    # much less padding than a plain shuffle
    spread = np.mean([np.ptp(lengths[a[lo:lo + 32]]) for lo in range(0, len(a), 32)])
    assert spread < 60


def masked_batch(b=1500, width=50, seed=0, short_rows=True):
    g = np.random.default_rng(seed)
    lens = g.integers(1, width + 1, b) if short_rows else np.full(b, width)
    tokens = torch.from_numpy(g.integers(N_SPECIAL, 1000, (b, width)))
    tokens[torch.arange(width)[None, :] < torch.from_numpy(width - lens)[:, None]] = PAD
    return tokens


def test_mask_tokens_replacement_statistics():
    tokens = masked_batch(short_rows=False)
    gen = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(tokens, 1000, mask_prob=0.2, last_item_prob=0.0, generator=gen)
    chosen = labels != PAD
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])  # untouched outside targets
    rate = chosen.float().mean().item()
    assert abs(rate - 0.2) < 0.01
    x = inputs[chosen]
    orig = tokens[chosen]
    n = len(x)
    masked = (x == MASK).sum().item() / n
    same = (x == orig).sum().item() / n
    random_ = ((x != MASK) & (x != orig)).sum().item() / n
    assert abs(masked - 0.8) < 0.02, masked
    assert abs(same - 0.1) < 0.015, same
    assert abs(random_ - 0.1) < 0.015, random_
    rnd = x[(x != MASK) & (x != orig)]
    assert (rnd >= N_SPECIAL).all() and (rnd < 1000).all()
    # random replacements spread over the item range, not one value
    assert len(torch.unique(rnd)) > 500


def test_mask_tokens_never_picks_pad_and_every_row_has_a_target():
    tokens = masked_batch(short_rows=True, seed=1)
    gen = torch.Generator().manual_seed(1)
    inputs, labels = mask_tokens(tokens, 1000, mask_prob=0.15, last_item_prob=0.1, generator=gen)
    pad = tokens == PAD
    assert (labels[pad] == PAD).all()
    assert (inputs[pad] == PAD).all()
    assert ((labels != PAD).sum(1) >= 1).all()
    # length-1 rows always target their single (last) item
    one = (~pad).sum(1) == 1
    assert one.sum() > 10
    assert (labels[one, -1] == tokens[one, -1]).all()
    assert ((labels[one] != PAD).sum(1) == 1).all()


def test_mask_tokens_last_item_rows():
    tokens = masked_batch(b=2000, short_rows=False, seed=2)
    inputs, labels = mask_tokens(tokens, 1000, 0.2, 1.0, torch.Generator().manual_seed(2))
    chosen = labels != PAD
    assert (chosen.sum(1) == 1).all()
    assert chosen[:, -1].all()
    assert (inputs[:, -1] == MASK).all()
    assert torch.equal(inputs[:, :-1], tokens[:, :-1])

    inputs, labels = mask_tokens(tokens, 1000, 0.2, 0.3, torch.Generator().manual_seed(3))
    chosen = labels != PAD
    last_only = (chosen.sum(1) == 1) & chosen[:, -1]
    # with 50 real tokens at mask_prob 0.2 a random row almost never has just the last one chosen
    assert abs(last_only.float().mean().item() - 0.3) < 0.04
    assert (inputs[last_only, -1] == MASK).all()


def test_mask_tokens_is_reproducible_with_the_generator():
    tokens = masked_batch(b=64, seed=4)
    a = mask_tokens(tokens, 1000, 0.2, 0.1, torch.Generator().manual_seed(7))
    b = mask_tokens(tokens, 1000, 0.2, 0.1, torch.Generator().manual_seed(7))
    c = mask_tokens(tokens, 1000, 0.2, 0.1, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_next_item_pairs_alignment():
    rows = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 0, 0, 0, 9]])
    inputs, labels = next_item_pairs(rows)
    assert inputs.tolist() == [[0, 0, 5, 6], [3, 4, 5, 6], [0, 0, 0, 0]]
    assert labels.tolist() == [[0, 0, 6, 7], [4, 5, 6, 7], [0, 0, 0, 0]]
    assert inputs.is_contiguous() and labels.is_contiguous()


def test_length_grouped_order_slices_stay_sorted_with_a_short_last_batch():
    lengths = np.random.default_rng(1).integers(1, 200, 32 * 40 + 5)
    for seed in range(5):
        order = length_grouped_order(lengths, 32, np.random.default_rng(seed), group_batches=8)
        for lo in range(0, len(order), 32):  # how recbert.training.trainer cuts batches
            assert (np.diff(lengths[order[lo:lo + 32]]) <= 0).all()

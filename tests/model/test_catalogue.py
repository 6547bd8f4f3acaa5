"""Scoring the catalogue in chunks: the chunk size rule, the chunks, per-row item sets
and the running top-k."""

from __future__ import annotations

import numpy as np
import torch

from recbert.data.vocab import N_SPECIAL, UNK
from recbert.model.catalogue import ItemSets, item_chunk_size, item_chunks, merge_top_k


def test_automatic_chunk_keeps_a_batch_of_scores_within_the_budget():
    assert item_chunk_size(1024) == 65536  # 1024 x 65536 float32 = 256 MiB
    assert item_chunk_size(1024, 100) == 100
    assert item_chunk_size(10**9) == 1
    assert len(item_chunks(12101, item_chunk_size(1024))) == 1  # Beauty: one chunk, as before
    assert len(item_chunks(10**6, item_chunk_size(1024))) == 16


def test_item_chunks_cover_the_catalogue_once():
    assert item_chunks(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert item_chunks(7, 10) == [slice(0, 7)]
    assert item_chunks(0, 4) == []


def test_item_sets_mask_contains_take_and_with_items():
    tokens = np.array([N_SPECIAL + 1, UNK, N_SPECIAL + 4, N_SPECIAL + 4, N_SPECIAL + 0])
    sets = ItemSets.from_tokens(tokens, np.array([3, 0, 2]), n_items=6)  # rows {1, 4}, {}, {4, 0}
    dense = sets.mask()
    assert dense.tolist() == [[False, True, False, False, True, False], [False] * 6,
                              [True, False, False, False, True, False]]
    assert torch.equal(sets.mask(slice(3, 6)), dense[:, 3:])
    assert torch.equal(ItemSets.from_mask(dense).mask(), dense)
    items = torch.tensor([[4, 2], [4, 4], [0, 5]])
    assert torch.equal(sets.contains(items), dense.gather(1, items))
    assert torch.equal(sets.take(torch.tensor([2, 0])).mask(), dense[[2, 0]])
    assert sets.with_items(torch.tensor([5, 5, 5])).mask()[:, 5].all()


def test_merge_top_k_equals_a_stable_sort_of_the_whole_row():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5, 23), generator=g).float()  # many ties
    want_values, want_items = torch.sort(scores, dim=1, descending=True, stable=True)
    for chunk, k in ((1, 3), (4, 7), (23, 5), (5, 23)):
        best = (torch.empty(5, 0), torch.empty(5, 0, dtype=torch.long))
        for items in item_chunks(23, chunk):
            best = merge_top_k(best, scores[:, items], items.start, k)
        assert torch.equal(best[0], want_values[:, :k]) and torch.equal(best[1], want_items[:, :k])


def test_distinct_keeps_each_row_item_pair_once():
    sets = ItemSets.from_tokens(np.array([5, 5, 7, 3, 5, 5]), np.array([3, 3]), n_items=10)
    d = sets.distinct()
    assert sorted(zip(d.rows.tolist(), d.items.tolist())) == [(0, 2), (0, 4), (1, 0), (1, 2)]
    assert torch.equal(d.mask(), sets.mask())

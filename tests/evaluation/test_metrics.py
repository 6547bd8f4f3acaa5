"""HR / NDCG / MRR against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recbert.evaluation.metrics import hit_rate, mrr, ndcg, ranking_metrics

RANKS = np.array([0, 1, 4, 30])


@pytest.mark.parametrize("k, expected", [(1, 1 / 4), (2, 2 / 4), (4, 2 / 4), (5, 3 / 4), (30, 3 / 4), (31, 1.0)])
def test_hit_rate(k, expected):
    assert hit_rate(RANKS, k) == pytest.approx(expected)


@pytest.mark.parametrize("k, expected", [
    (1, 1.0 / 4),
    (2, (1.0 + 1 / math.log2(3)) / 4),
    (5, (1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 4),
    (10, (1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 4),
    (31, (1.0 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(32)) / 4),
])
def test_ndcg(k, expected):
    assert ndcg(RANKS, k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_known_numbers():
    # rank 1 -> 1/log2(3) = 0.63093; rank 4 -> 1/log2(6) = 0.38685; rank 30 -> 1/5
    assert ndcg(np.array([1]), 10) == pytest.approx(0.6309297535714575)
    assert ndcg(np.array([4]), 10) == pytest.approx(0.3868528072345416)
    assert ndcg(np.array([30]), 31) == pytest.approx(0.2)


def test_mrr():
    assert mrr(RANKS) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 31) / 4)
    assert mrr(np.array([0, 0])) == 1.0


def test_empty_ranks_give_zero():
    empty = np.array([], dtype=np.int64)
    assert hit_rate(empty, 10) == ndcg(empty, 10) == mrr(empty) == 0.0


def test_miss_rank_counts_as_miss():
    n_items = 100
    ranks = np.array([0, n_items])
    assert hit_rate(ranks, 10) == 0.5
    assert ndcg(ranks, 10) == 0.5
    assert mrr(ranks) == pytest.approx((1 + 1 / 101) / 2)


def test_ranking_metrics_keys_and_values():
    out = ranking_metrics(RANKS, [1, 5])
    assert set(out) == {"hr@1", "ndcg@1", "hr@5", "ndcg@5", "mrr"}
    assert out["hr@5"] == pytest.approx(0.75)
    assert out["ndcg@1"] == pytest.approx(0.25)
    assert out["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert out["mrr"] == pytest.approx(mrr(RANKS))
    assert all(isinstance(v, float) for v in out.values())

"""Ranking metrics from the rank of each user's held-out target.

``rank`` is 0-based: the number of candidates scored strictly higher than the
target plus half the number of candidates tied with it (its expected position
under a random tie-break, so it may be a half-integer; see
:mod:`recbert.evaluation.ranking`). A target that cannot be ranked (unknown
item, or removed by the history filter) gets rank ``n_candidates`` and counts
as a miss everywhere. HR@k counts ``rank < k``; NDCG@k and MRR use the rank as
it is.
"""

from __future__ import annotations

import numpy as np


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """With one relevant item, NDCG@k = 1 / log2(rank + 2) when rank < k."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (ranks.astype(np.float64) + 1.0))) if len(ranks) else 0.0


def ranking_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = mrr(ranks)
    return out

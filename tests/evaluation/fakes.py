"""Fake recommenders with exactly known scores, and eval sets that exercise every case
(unknown targets and history items, targets already in the history), for the ranking tests."""

from __future__ import annotations

import copy
import types

import numpy as np
import torch
from torch import nn

from recbert.config import ModelConfig
from recbert.data.sequences import EvalSet, Sequences
from recbert.data.vocab import MASK, N_SPECIAL, PAD, UNK
from recbert.model.recommender import ItemScorer, SequenceRecommender


class BagOfTokensModel(nn.Module):
    """Fake recommender with exactly known scores. The hidden state at the last
    column is a position-weighted bag of the row's tokens (weight = distance from
    the left edge of a max_len window), and the scorer multiplies it by an
    integer matrix, so float32 scores are exact integers."""

    def __init__(self, n_items: int, max_len: int, causal: bool, seed: int = 0):
        super().__init__()
        self.config = ModelConfig(hidden=8, heads=2, max_len=max_len, n_tokens=n_items + N_SPECIAL,
                                  attention="causal" if causal else "bidirectional")
        g = np.random.default_rng(seed)
        self.weights = torch.from_numpy(g.integers(-4, 5, (self.config.n_tokens, n_items)).astype(np.float32))
        self.scorer = lambda h: h @ self.weights
        self.modes_seen: list[bool] = []
        self.widths: list[int] = []

    @property
    def causal(self) -> bool:
        return self.config.attention == "causal"

    def forward(self, x: torch.Tensor):
        self.modes_seen.append(self.training)
        self.widths.append(x.shape[1])
        b, length = x.shape
        pos_weight = torch.arange(self.config.max_len - length + 1, self.config.max_len + 1, dtype=torch.float32)
        onehot = torch.nn.functional.one_hot(x, self.config.n_tokens).float() * pos_weight[None, :, None]
        onehot[x == PAD] = 0
        h = torch.zeros(b, length, self.config.n_tokens)
        h[:, -1] = onehot.sum(1)
        return types.SimpleNamespace(last_hidden_state=h, sequence_output=h)


def brute_scores(model: BagOfTokensModel, history: list[int]) -> np.ndarray:
    max_len = model.config.max_len
    row = history[-(max_len - 1):] + [MASK] if not model.causal else history[-max_len:]
    vec = np.zeros(model.config.n_tokens)
    for j, tok in enumerate(row):
        vec[tok] += max_len - len(row) + j + 1
    return vec @ model.weights.numpy().astype(np.float64)


def brute_ranks(model, histories, targets, n_items):
    out = {"all": [], "unseen": [], "sampled": []}
    for hist, target in zip(histories, targets):
        t = target - N_SPECIAL
        if t < 0:
            for k in out:
                out[k].append(n_items)
            continue
        s = brute_scores(model, hist)
        seen = {x - N_SPECIAL for x in hist if x >= N_SPECIAL}
        above, tied = s > s[t], s == s[t]  # integer scores: ties are common here
        others = [i for i in range(n_items) if i != t]
        out["all"].append(above.sum() + 0.5 * sum(tied[i] for i in others))
        unseen_rank = sum(above[i] + 0.5 * tied[i] for i in others if i not in seen)
        out["unseen"].append(n_items if t in seen else unseen_rank)
        # with every allowed item sampled: rank among items outside history and target
        out["sampled"].append(unseen_rank)
    return {k: np.array(v) for k, v in out.items()}


def make_eval_set(n_users=23, n_items=30, seed=0):
    g = np.random.default_rng(seed)
    histories, targets = [], []
    for u in range(n_users):
        n = int(g.integers(0 if u == 0 else 1, 12))
        hist = g.integers(N_SPECIAL, N_SPECIAL + n_items, n).tolist()
        if u % 5 == 1:
            hist[len(hist) // 2] = UNK  # unknown item inside the history
        histories.append(hist)
        if u % 7 == 3:
            targets.append(UNK)  # unknown target: always a miss
        elif u % 4 == 2 and hist and hist[-1] >= N_SPECIAL:
            targets.append(hist[-1])  # target already in the history
        else:
            targets.append(int(g.integers(N_SPECIAL, N_SPECIAL + n_items)))
    lengths = np.array([len(h) for h in histories])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([x for h in histories for x in h], dtype=np.int64)
    return EvalSet(Sequences(np.arange(n_users) * 10, items, offsets), np.array(targets, dtype=np.int64)), histories


class ChunkedBagOfTokensModel(BagOfTokensModel):
    """The bag-of-tokens fake with a real :class:`ItemScorer` whose item vectors are the
    columns of its integer matrix: the same exact integer scores, scored in chunks."""

    def __init__(self, n_items: int, max_len: int, causal: bool, seed: int = 0):
        super().__init__(n_items, max_len, causal, seed)
        n_tokens = self.config.n_tokens
        self.scorer = ItemScorer(ModelConfig(hidden=n_tokens, heads=1, n_tokens=n_tokens, output_transform=False),
                                 nn.Embedding(n_tokens, n_tokens))
        with torch.no_grad():
            self.scorer.item_table.weight[N_SPECIAL:] = self.weights.T


class WholeCatalogue(nn.Module):
    """A model's scorer as a plain ``hidden -> [B, n_items]`` module: evaluate_ranking then
    ranks each batch's whole score matrix with target_ranks (the unchunked reference)."""

    def __init__(self, scorer: nn.Module):
        super().__init__()
        self.inner = scorer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden)


def unchunked(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    reference.scorer = WholeCatalogue(reference.scorer)
    return reference


def tied_real_model(n_items: int) -> SequenceRecommender:
    """A real model; every other item has a zero vector and a bias of 0, 1 or 2, so those
    items score exactly their bias: exact ties among them whatever the matmul."""
    cfg = ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=5, n_tokens=n_items + N_SPECIAL,
                      dropout=0.0, attention_dropout=0.0, init_std=0.5)
    torch.manual_seed(5)
    model = SequenceRecommender(cfg)
    with torch.no_grad():
        model.embeddings.item.weight[N_SPECIAL::2] = 0.0
        model.scorer.bias[::2] = torch.arange(len(model.scorer.bias[::2])) % 3.0
    return model.eval()

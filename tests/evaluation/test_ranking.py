"""Full-ranking evaluation: target ranks under each protocol, negative sampling,
and evaluate_ranking against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from recbert.config import EvalConfig, ModelConfig
from recbert.data.sequences import Sequences
from recbert.data.vocab import N_SPECIAL, UNK
from recbert.evaluation.metrics import ranking_metrics
from recbert.evaluation.ranking import (
    chunked_target_ranks,
    evaluate_ranking,
    history_mask,
    sample_negatives,
    selection_protocol,
    target_ranks,
)
from recbert.errors import DivergenceError
from recbert.finite import require_finite
from recbert.model.catalogue import ItemSets
from recbert.model.recommender import ItemScorer, SequenceRecommender
from tests.evaluation.fakes import (
    BagOfTokensModel,
    ChunkedBagOfTokensModel,
    brute_ranks,
    make_eval_set,
    tied_real_model,
    unchunked,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- target_ranks ----------------------------------------------------------------------------
SCORES = torch.tensor([
    [0.1, 0.5, 0.3, 0.9, 0.3],
    [0.1, 0.5, 0.3, 0.9, 0.3],
    [0.1, 0.5, 0.3, 0.9, 0.3],
    [0.1, 0.5, 0.3, 0.9, 0.3],
    [0.4, 0.4, 0.4, 0.4, 0.4],
])


def seen_rows(*sets, n=5):
    m = torch.zeros(len(sets), n, dtype=torch.bool)
    for r, s in enumerate(sets):
        m[r, list(s)] = True
    return m


def test_target_ranks_all_and_unseen():
    targets = torch.tensor([2, 2, 3, -1, 1])
    seen = seen_rows({3}, {2, 1}, {0, 1}, set(), {0})
    ranks = target_ranks(SCORES, targets, seen, 0, gen())
    assert "sampled" not in ranks
    # 'all': items scored strictly higher, plus half of each tie (item 4 ties item 2;
    # row 4 is constant: the target ties all 4 others -> (5 - 1) / 2)
    assert ranks["all"].tolist() == [2.5, 2.5, 0, 5, 2.0]
    # 'unseen': history items removed; a target inside the history is a miss (n_items)
    assert ranks["unseen"].tolist() == [1.5, 5, 0, 5, 1.5]


def test_target_ranks_sampled_with_all_negatives_is_exact():
    targets = torch.tensor([2, 0, -1, 1])
    scores = SCORES[:4]
    seen = seen_rows({3}, set(), set(), {1, 3})
    ranks = target_ranks(scores, targets, seen, 100, gen())
    # capped at n_items - 1 negatives: every non-history, non-target item is a negative
    # row 0: negatives {0, 1, 4} -> above 0.3: {1}, tied: {4}; row 1: {1..4} -> all 4 above 0.1
    # row 3: target in history -> ranked against {0, 2, 4}: none above 0.5
    assert ranks["sampled"].tolist() == [1.5, 4, 5, 0]


def test_target_ranks_sampled_bounds():
    torch.manual_seed(0)
    scores = torch.randn(200, 40)
    targets = torch.randint(0, 40, (200,))
    seen = torch.rand(200, 40) < 0.2
    ranks = target_ranks(scores, targets, seen, 10, gen(3))
    assert (ranks["sampled"] <= 10).all()
    hit = ~seen.gather(1, targets[:, None])[:, 0]
    # sampled negatives are a subset of the unseen items, so the rank cannot exceed the unseen rank
    assert (ranks["sampled"][hit] <= ranks["unseen"][hit]).all()
    assert (ranks["unseen"][hit] <= ranks["all"][hit]).all()
    assert ranks["sampled"].float().mean() < ranks["unseen"][hit].float().mean()
    again = target_ranks(scores, targets, seen, 10, gen(3))
    assert torch.equal(again["sampled"], ranks["sampled"])


@pytest.mark.parametrize("n_items", [2, 7, 100])
def test_constant_scores_rank_every_target_in_the_middle_under_every_protocol(n_items):
    """A collapsed model (one score for every item) is a miss, not a perfect hit."""
    scores = torch.full((2, n_items), 0.25)
    targets = torch.tensor([0, n_items - 1])
    seen = torch.zeros(2, n_items, dtype=torch.bool)
    ranks = target_ranks(scores, targets, seen, n_items - 1, gen())
    for name in ("all", "unseen", "sampled"):
        assert ranks[name].tolist() == [(n_items - 1) / 2] * 2, name
    m = ranking_metrics(ranks["all"].numpy(), [1])
    assert m["hr@1"] == (1.0 if n_items == 2 else 0.0)  # (2 - 1) / 2 = 0.5 < 1: a coin flip counts
    seen[:, 1:] = True  # only the target itself is left for row 0
    assert target_ranks(scores, targets, seen, 0, gen())["unseen"].tolist() == [0.0, n_items]


def test_ties_cost_half_a_rank_each_and_distinct_scores_are_unchanged():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    seen = torch.zeros(1, 5, dtype=torch.bool)
    assert target_ranks(scores, torch.tensor([1]), seen, 0, gen())["all"].tolist() == [2.0]
    assert target_ranks(scores, torch.tensor([0]), seen, 0, gen())["all"].tolist() == [0.0]
    assert target_ranks(scores, torch.tensor([4]), seen, 0, gen())["all"].tolist() == [4.0]
    distinct = torch.randn(50, 30)
    t = torch.randint(0, 30, (50,))
    strict = (distinct > distinct.gather(1, t[:, None])).sum(1)
    assert torch.equal(target_ranks(distinct, t, torch.zeros(50, 30, dtype=torch.bool), 0, gen())["all"],
                       strict.double())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_an_error_not_a_result(bad):
    scores = torch.zeros(2, 100)
    scores[1, 7] = bad
    with pytest.raises(DivergenceError, match="model scores are not finite"):
        target_ranks(scores, torch.tensor([0, 1]), torch.zeros(2, 100, dtype=torch.bool), 10, gen())
    with pytest.raises(DivergenceError, match="in 1 of 2 rows"):
        require_finite(scores)
    with pytest.raises(DivergenceError, match="200 NaN"):
        require_finite(torch.full((2, 100), float("nan")))


# -- sample_negatives -----------------------------------------------------------------------
def test_sample_negatives_distinct_allowed_and_validity():
    n_items, n = 50, 10
    forbidden = torch.zeros(4, n_items, dtype=torch.bool)
    forbidden[1, 5:] = True  # 5 allowed < n
    forbidden[2, :] = True
    forbidden[2, 20:30] = False  # exactly n allowed
    forbidden[3, ::2] = True  # 25 allowed
    items, valid = sample_negatives(forbidden, n, gen(1))
    assert items.shape == valid.shape == (4, n)
    for r in range(4):
        got = items[r][valid[r]].tolist()
        assert len(got) == len(set(got)), "negatives must be distinct"
        assert not forbidden[r, got].any(), "negatives must be allowed"
    assert valid[0].all() and valid[3].all()
    assert valid[1].sum() == 5 and set(items[1][valid[1]].tolist()) == {0, 1, 2, 3, 4}
    assert valid[2].all() and set(items[2].tolist()) == set(range(20, 30))


def test_sample_negatives_none_allowed():
    forbidden = torch.ones(2, 8, dtype=torch.bool)
    items, valid = sample_negatives(forbidden, 3, gen())
    assert not valid.any()


def test_sample_negatives_uniform_over_a_large_catalogue():
    rows, n_items, n = 3000, 400, 20
    forbidden = torch.zeros(rows, n_items, dtype=torch.bool)
    forbidden[:, :40] = True
    items, valid = sample_negatives(forbidden, n, gen(5))
    assert valid.all()
    freq = torch.bincount(items.flatten(), minlength=n_items).float() / rows
    assert (freq[:40] == 0).all()
    # each of the 360 allowed items is drawn in 20/360 of rows
    assert torch.allclose(freq[40:], torch.full((360,), n / 360), atol=0.02)
    assert abs(freq[40:220].mean() - freq[220:].mean()) < 0.003


def test_sample_negatives_uniform_over_a_small_catalogue():
    rows, n_items, n = 10000, 20, 3
    forbidden = torch.zeros(rows, n_items, dtype=torch.bool)
    forbidden[:, :4] = True
    items, valid = sample_negatives(forbidden, n, gen(5))
    assert valid.all()
    freq = torch.bincount(items.flatten(), minlength=n_items).float() / rows
    assert (freq[:4] == 0).all()
    # each of the 16 allowed items is drawn in 3/16 of rows (std ~0.004 at this size)
    assert torch.allclose(freq[4:], torch.full((16,), n / 16), atol=0.02)


# -- history_mask ----------------------------------------------------------------------------
def test_history_mask_rows_and_unk():
    seqs = Sequences(np.array([1, 2, 3]), np.array([3, UNK, 5, 4, 4, 6]), np.array([0, 3, 3, 6]))
    m = history_mask(seqs, np.array([2, 0, 1]), 4)
    assert m.tolist() == [
        [False, True, False, True],  # user 3: tokens 4, 4, 6
        [True, False, True, False],  # user 1: tokens 3, UNK, 5 (UNK is not an item)
        [False, False, False, False],  # user 2: empty history
    ]


# -- evaluate_ranking ------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_evaluate_ranking_matches_brute_force(causal):
    n_items, max_len = 30, 6
    model = BagOfTokensModel(n_items, max_len, causal)
    model.train()
    eval_set, histories = make_eval_set(n_items=n_items)
    assert any(len(h) > max_len for h in histories)
    config = EvalConfig(ks=[1, 3, 10], select_metric="ndcg@10", sampled_negatives=1000, batch_size=4)
    out = evaluate_ranking(model, eval_set, config, seed=0)

    expected = brute_ranks(model, histories, eval_set.targets.tolist(), n_items)
    assert (expected["all"] % 1 == 0.5).any()  # some targets are tied with an odd number of items
    assert (expected["unseen"] == n_items).sum() > (expected["all"] == n_items).sum()  # the cases are exercised
    assert out["n_users"] == len(histories)
    for protocol, ranks in expected.items():
        for metric, value in ranking_metrics(ranks, config.ks).items():
            assert out[f"{protocol}/{metric}"] == pytest.approx(value, abs=1e-12), (protocol, metric)
    assert set(out) == {"n_users"} | {f"{p}/{m}" for p in expected for m in ranking_metrics(expected["all"], config.ks)}
    # run in eval mode, training mode restored, batches no wider than max_len
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training
    assert max(model.widths) == max_len and len(model.widths) == 6  # ceil(23 / 4) batches


def test_evaluate_ranking_sampled_protocol_off_and_seeded():
    model = BagOfTokensModel(30, 6, causal=False)
    model.eval()
    eval_set, _ = make_eval_set(n_items=30, seed=1)
    off = evaluate_ranking(model, eval_set, EvalConfig(ks=[10], sampled_negatives=0, batch_size=8))
    assert not any(k.startswith("sampled/") for k in off)
    assert not model.training  # it was in eval mode before and stays so
    cfg = EvalConfig(ks=[10], sampled_negatives=5, batch_size=8)
    a, b = evaluate_ranking(model, eval_set, cfg, seed=3), evaluate_ranking(model, eval_set, cfg, seed=3)
    assert a == b
    assert a["sampled/hr@10"] >= a["unseen/hr@10"]  # 5 negatives: every ranked target is in the top 10
    assert a["all/mrr"] == off["all/mrr"]


def test_evaluate_ranking_with_a_real_model():
    """A real SequenceRecommender whose item vectors are zero scores every user by the
    output bias alone, so the ranks follow from the bias values."""
    n_items = 12
    cfg = ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=5, n_tokens=n_items + N_SPECIAL,
                      dropout=0.0, attention_dropout=0.0)
    model = SequenceRecommender(cfg)
    bias = torch.randperm(n_items, generator=gen(2)).float()
    with torch.no_grad():
        model.embeddings.item.weight[N_SPECIAL:] = 0.0
        model.scorer.bias.copy_(bias)
    eval_set, histories = make_eval_set(n_users=9, n_items=n_items, seed=4)
    out = evaluate_ranking(model, eval_set, EvalConfig(ks=[1, 5], select_metric="hr@5", sampled_negatives=0,
                                                       batch_size=4))
    b = bias.numpy()
    all_ranks, unseen_ranks = [], []
    for hist, target in zip(histories, eval_set.targets):
        t = int(target) - N_SPECIAL
        if t < 0:
            all_ranks.append(n_items)
            unseen_ranks.append(n_items)
            continue
        seen = {x - N_SPECIAL for x in hist if x >= N_SPECIAL}
        all_ranks.append(int((b > b[t]).sum()))
        unseen_ranks.append(n_items if t in seen else sum(1 for i in range(n_items) if b[i] > b[t] and i not in seen))
    for protocol, ranks in (("all", all_ranks), ("unseen", unseen_ranks)):
        for metric, value in ranking_metrics(np.array(ranks), [1, 5]).items():
            assert out[f"{protocol}/{metric}"] == pytest.approx(value), (protocol, metric)
    assert model.training  # restored


def test_evaluate_ranking_of_collapsed_and_diverged_models():
    """Constant scores: every target in the middle, not a perfect hit; NaN weights: an error."""
    n_items = 12
    cfg = ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=5, n_tokens=n_items + N_SPECIAL)
    model = SequenceRecommender(cfg)
    with torch.no_grad():
        model.embeddings.item.weight[N_SPECIAL:] = 0.0
        model.scorer.bias.zero_()
    eval_set, _ = make_eval_set(n_users=9, n_items=n_items, seed=4)
    config = EvalConfig(ks=[1, 5], select_metric="hr@5", sampled_negatives=5, batch_size=4)
    out = evaluate_ranking(model, eval_set, config)
    for protocol in ("all", "unseen", "sampled"):
        assert out[f"{protocol}/hr@1"] == 0.0, protocol
    assert out["all/mrr"] < 0.2
    with torch.no_grad():
        model.embeddings.item.weight[N_SPECIAL + 3, 0] = float("nan")
    with pytest.raises(DivergenceError, match="model scores are not finite"):
        evaluate_ranking(model, eval_set, config)


def test_selection_protocol():
    assert selection_protocol(EvalConfig(exclude_seen=True)) == "unseen"
    assert selection_protocol(EvalConfig()) == "all"


# -- chunked over the catalogue ---------------------------------------------------------------
CHUNKS = [1, 7, 12, 1000]  # one item, a size that divides neither catalogue, one chunk, more than the catalogue


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_evaluation_matches_brute_force_with_ties(causal, chunk):
    n_items = 30
    model = ChunkedBagOfTokensModel(n_items, 6, causal)
    eval_set, histories = make_eval_set(n_items=n_items)
    config = EvalConfig(ks=[1, 3, 10], sampled_negatives=1000, batch_size=4, item_chunk=chunk)
    out = evaluate_ranking(model, eval_set, config)
    expected = brute_ranks(model, histories, eval_set.targets.tolist(), n_items)
    assert (expected["all"] % 1 == 0.5).any()  # integer scores: ties are exercised
    for protocol, ranks in expected.items():
        for metric, value in ranking_metrics(ranks, config.ks).items():
            assert out[f"{protocol}/{metric}"] == pytest.approx(value, abs=1e-12), (protocol, metric)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_evaluation_equals_the_whole_matrix_with_sampled_negatives(chunk):
    """The seeded draw of negatives is the same as the unchunked one, so are the figures."""
    model = ChunkedBagOfTokensModel(30, 6, causal=False)
    eval_set, _ = make_eval_set(n_items=30, seed=1)
    config = EvalConfig(ks=[1, 5, 10], sampled_negatives=5, batch_size=8, item_chunk=chunk)
    assert evaluate_ranking(model, eval_set, config, seed=3) == evaluate_ranking(unchunked(model), eval_set, config,
                                                                                 seed=3)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_evaluation_of_a_real_model_equals_the_unchunked_reference(chunk):
    n_items = 12
    model = tied_real_model(n_items)
    eval_set, _ = make_eval_set(n_users=40, n_items=n_items, seed=4)
    config = EvalConfig(ks=[1, 5, 10], sampled_negatives=4, batch_size=16, item_chunk=chunk)
    got = evaluate_ranking(model, eval_set, config, seed=2)
    assert got == evaluate_ranking(unchunked(model), eval_set, config, seed=2)
    assert set(got) == {"n_users"} | {f"{p}/{m}" for p in ("all", "unseen", "sampled")
                                      for m in ("hr@1", "hr@5", "hr@10", "ndcg@1", "ndcg@5", "ndcg@10", "mrr")}


def test_chunked_ranks_split_ties_across_chunks():
    """Tied items in other chunks than the target's count half, as in one matrix."""
    scorer = ItemScorer(ModelConfig(hidden=2, heads=1, n_tokens=6 + N_SPECIAL, output_transform=False),
                        nn.Embedding(6 + N_SPECIAL, 2))
    with torch.no_grad():
        scorer.item_table.weight[N_SPECIAL:] = torch.tensor([[1.0, 0], [0, 1], [1, 0], [2, 0], [1, 0], [0, 0]])
    query = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([2, 5])
    seen = ItemSets.from_mask(seen_rows({4}, {1}, n=6))
    whole = target_ranks(scorer(query), targets, seen.mask(), 0, gen())
    for chunk in (1, 2, 4, 6):
        ranks = chunked_target_ranks(scorer, query, targets, seen, chunk, 0, gen())
        assert {k: v.tolist() for k, v in ranks.items()} == {k: v.tolist() for k, v in whole.items()}
    # row 0 scores [1, 1, 1, 2, 1, 0], target 2: item 3 above, items 0, 1, 4 tied (4 seen);
    # row 1 scores [0, 1, 0, 0, 0, 0], target 5: item 1 above (and seen), items 0, 2, 3, 4 tied
    assert whole["all"].tolist() == [2.5, 3.0] and whole["unseen"].tolist() == [2.0, 2.0]


def test_chunked_evaluation_never_scores_the_whole_catalogue(monkeypatch):
    n_items, chunk = 50, 8
    model = tied_real_model(n_items)
    eval_set, _ = make_eval_set(n_users=20, n_items=n_items, seed=2)
    widths = []
    score, mask = ItemScorer.score, ItemSets.mask

    def recording_score(self, query, items=slice(None)):
        out = score(self, query, items)
        widths.append(out.shape[1])
        return out

    def recording_mask(self, items=slice(None)):
        out = mask(self, items)
        widths.append(out.shape[1])
        return out

    def no_forward(self, hidden):
        raise AssertionError("the whole [batch, n_items] score matrix was computed")

    monkeypatch.setattr(ItemScorer, "score", recording_score)
    monkeypatch.setattr(ItemSets, "mask", recording_mask)
    monkeypatch.setattr(ItemScorer, "forward", no_forward)
    evaluate_ranking(model, eval_set, EvalConfig(ks=[10], sampled_negatives=0, batch_size=8, item_chunk=chunk))
    assert widths and max(widths) == chunk


def test_chunked_evaluation_of_a_diverged_model_is_an_error():
    model = tied_real_model(12)
    with torch.no_grad():
        model.embeddings.item.weight[N_SPECIAL + 11, 0] = float("nan")  # in the last chunk
    eval_set, _ = make_eval_set(n_users=9, n_items=12, seed=4)
    with pytest.raises(DivergenceError, match="model scores are not finite"):
        evaluate_ranking(model, eval_set, EvalConfig(ks=[10], sampled_negatives=0, item_chunk=5))

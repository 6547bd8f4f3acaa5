"""Ranking among candidate items (eval.candidates): against a brute-force computation,
every item as a candidate equals no restriction, and the candidate file's errors."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import polars as pl
import pytest
import torch

from recbert.config import EvalConfig
from recbert.data.sequences import Splits
from recbert.data.vocab import N_SPECIAL, ItemVocab
from recbert.errors import DataError
from recbert.evaluation.candidates import Candidates, read_candidate_ids, with_candidates
from recbert.evaluation.metrics import ranking_metrics
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.catalogue import ItemSets
from tests.evaluation.fakes import (
    BagOfTokensModel,
    ChunkedBagOfTokensModel,
    brute_scores,
    make_eval_set,
    tied_real_model,
    unchunked,
)

N_ITEMS = 30
CANDIDATES = sorted({*range(0, N_ITEMS, 2), 1, 29})  # item indices


def brute_candidate_ranks(model, histories, targets, candidates: list[int]) -> dict[str, np.ndarray]:
    """Each protocol's rank counted over ``candidates`` only; a target outside them, or
    unknown, is a miss (rank ``len(candidates)``); ``sampled`` with every allowed
    candidate drawn equals ``unseen``."""
    n = len(candidates)
    out = {"all": [], "unseen": [], "sampled": []}
    for hist, target in zip(histories, targets):
        t = target - N_SPECIAL
        if t < 0 or t not in candidates:
            for k in out:
                out[k].append(n)
            continue
        s = brute_scores(model, hist)
        seen = {x - N_SPECIAL for x in hist if x >= N_SPECIAL}
        others = [i for i in candidates if i != t]
        out["all"].append(sum((s[i] > s[t]) + 0.5 * (s[i] == s[t]) for i in others))
        unseen = sum((s[i] > s[t]) + 0.5 * (s[i] == s[t]) for i in others if i not in seen)
        out["unseen"].append(n if t in seen else unseen)
        out["sampled"].append(unseen)
    return {k: np.array(v, dtype=float) for k, v in out.items()}


def restricted(eval_set, items):
    return dataclasses.replace(eval_set, candidates=np.asarray(items, dtype=np.int64) + N_SPECIAL)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_ranking_among_candidates_matches_brute_force(chunked, chunk):
    model = (ChunkedBagOfTokensModel if chunked else BagOfTokensModel)(N_ITEMS, 6, causal=False)
    eval_set, histories = make_eval_set(n_users=60, n_items=N_ITEMS)
    config = EvalConfig(ks=[1, 3, 10], sampled_negatives=1000, batch_size=4, item_chunk=chunk)
    out = evaluate_ranking(model, restricted(eval_set, CANDIDATES), config)
    expected = brute_candidate_ranks(model, histories, eval_set.targets.tolist(), CANDIDATES)
    targets = eval_set.targets - N_SPECIAL
    assert ((targets >= 0) & ~np.isin(targets, CANDIDATES)).any()  # targets outside the candidates: misses
    assert (expected["all"] < len(CANDIDATES)).sum() >= 5 and (expected["all"] % 1 == 0.5).any()  # ties, hits
    for protocol, ranks in expected.items():
        for metric, value in ranking_metrics(ranks, config.ks).items():
            assert out[f"{protocol}/{metric}"] == pytest.approx(value, abs=1e-12), (protocol, metric)
    # a restriction that matters: the unrestricted figures differ
    assert out != evaluate_ranking(model, eval_set, config)


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_every_item_a_candidate_is_exactly_the_unrestricted_evaluation(chunk):
    """Same figures to the last bit, the seeded sampled protocol included: candidate ``j``
    is item ``j``, so the scores, ties and negative draws are the unrestricted ones."""
    model = tied_real_model(12)
    eval_set, _ = make_eval_set(n_users=40, n_items=12, seed=4)
    config = EvalConfig(ks=[1, 5, 10], sampled_negatives=4, batch_size=16, item_chunk=chunk)
    every = restricted(eval_set, range(12))
    assert evaluate_ranking(model, every, config, seed=2) == evaluate_ranking(model, eval_set, config, seed=2)


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_candidates_of_a_real_model_chunked_equal_its_whole_score_matrix(chunk):
    model = tied_real_model(12)
    eval_set, _ = make_eval_set(n_users=40, n_items=12, seed=4)
    config = EvalConfig(ks=[1, 5, 10], sampled_negatives=3, batch_size=16, item_chunk=chunk)
    some = restricted(eval_set, [0, 2, 3, 7, 8, 11])
    got = evaluate_ranking(model, some, config, seed=2)
    assert got == evaluate_ranking(unchunked(model), some, config, seed=2)
    assert got != evaluate_ranking(model, eval_set, config, seed=2)


def test_candidates_map_targets_and_histories_to_their_positions():
    c = Candidates.of_tokens(np.array([N_SPECIAL + 5, N_SPECIAL + 1, N_SPECIAL + 5, 0, N_SPECIAL + 99]), 10)
    assert c.items.tolist() == [1, 5] and len(c) == 2  # sorted, distinct, specials and unknown tokens left out
    seen = ItemSets(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 3, 1, 5]), 2, 10)
    targets, compact = c.compact(torch.tensor([5, 3]), seen)
    assert targets.tolist() == [1, -1]  # item 3 is no candidate: a miss
    assert compact.n_items == 2 and compact.rows.tolist() == [0, 1, 1] and compact.items.tolist() == [1, 0, 1]
    assert c.compact(torch.tensor([-1]), ItemSets(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                                  1, 10))[0].tolist() == [-1]
    with pytest.raises(DataError, match="none of the candidate items"):
        Candidates.of_tokens(np.array([0, 1]), 10)


# -- the candidate file -------------------------------------------------------------------------
def splits_of(eval_set) -> Splits:
    return Splits(None, eval_set, eval_set)


def test_with_candidates_reads_the_item_column_and_logs_what_it_leaves_out(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    vocab = ItemVocab(np.arange(100, 130))  # item 100 + i is token N_SPECIAL + i
    eval_set, _ = make_eval_set(n_items=30)
    path = tmp_path / "on_sale.parquet"
    pl.DataFrame({"sku": [100, 103, 103, 129, 777], "price": [1.0, 2.0, 2.0, 3.0, 4.0]}).write_parquet(path)
    assert with_candidates(splits_of(eval_set), None, vocab, "sku").test is eval_set
    got = with_candidates(splits_of(eval_set), str(path), vocab, "sku")
    assert got.test.candidates.tolist() == [N_SPECIAL, N_SPECIAL + 3, N_SPECIAL + 29]
    assert got.val.candidates.tolist() == got.test.candidates.tolist() and got.test.targets is eval_set.targets
    assert eval_set.candidates is None  # the given splits are not changed
    assert f"ranking among 3 of the 4 items of {path} (1 are not in the vocabulary of 30 items)" in caplog.text
    assert "test targets are not candidates (misses)" in caplog.text


def test_candidate_ids_may_be_strings_or_come_from_an_events_file(tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": [1, 1, 2], "item_id": ["b", "a", "b"], "timestamp": [1, 2, 3]}).write_parquet(path)
    assert read_candidate_ids(path, "item_id").to_list() == ["b", "a"]
    vocab = ItemVocab(np.array(["a", "b", "c"], dtype=object))
    eval_set, _ = make_eval_set(n_items=3)
    got = with_candidates(splits_of(eval_set), str(path), vocab, "item_id")
    assert got.test.candidates.tolist() == [N_SPECIAL, N_SPECIAL + 1]  # the tokens of "a" and "b", sorted


@pytest.mark.parametrize("write, expected", [
    (None, "is not a file"),
    (lambda p: p.write_text("not parquet"), "is not a readable parquet file"),
    (lambda p: pl.DataFrame({"other": [1]}).write_parquet(p), "has no column 'item_id' (data.item_col); found ['other']"),
    (lambda p: pl.DataFrame({"item_id": [1.5]}).write_parquet(p), "must hold integers or strings, found Float64"),
    (lambda p: pl.DataFrame({"item_id": [1, None]}).write_parquet(p), "1 null value(s) in column 'item_id'"),
    (lambda p: pl.DataFrame({"item_id": []}, schema={"item_id": pl.Int64}).write_parquet(p), "lists no items"),
    (lambda p: pl.DataFrame({"item_id": [555, 556]}).write_parquet(p), "none of the 2 items of"),
])
def test_a_bad_candidate_file_is_one_clear_error_naming_it(tmp_path, write, expected):
    path = tmp_path / "candidates.parquet"
    if write is not None:
        write(path)
    eval_set, _ = make_eval_set(n_items=30)
    with pytest.raises(DataError) as err:
        with_candidates(splits_of(eval_set), str(path), ItemVocab(np.arange(100, 130)), "item_id")
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)

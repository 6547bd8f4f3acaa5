"""MovieLens-100K task builders: labels against users.parquet, CTR histories strictly in the past."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from recbert.data.tasks import (AGE_LABELS, age_bucket, build_ctr_task, build_user_task)
from recbert.data.vocab import PAD, ItemVocab
from recbert.errors import DataError
from tests.conftest import REPO

ML = REPO / "data" / "ml-100k"


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return pl.read_parquet(ML / "events.parquet")


@pytest.fixture(scope="module")
def vocab(events) -> ItemVocab:
    return ItemVocab.build(events["item_id"])


@pytest.fixture(scope="module")
def ctr(events, vocab):
    return build_ctr_task(events, vocab, max_len=20, items=ML / "items.parquet")


def test_age_buckets_follow_the_ml1m_edges():
    ages = [1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73]
    assert age_bucket(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert AGE_LABELS == ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


@pytest.mark.parametrize("task", ["gender", "age", "occupation"])
def test_user_task_labels_match_users_parquet(task, events, vocab):
    users = pl.read_parquet(ML / "users.parquet")
    t = build_user_task(task, ML / "events.parquet", ML / "users.parquet", vocab, max_len=30)
    assert len(t) == users.height == 943
    truth = dict(zip(users["user_id"].to_list(), users["age" if task == "age" else task].to_list()))
    for uid, label in zip(t.user_ids.tolist(), t.labels.tolist()):
        if task == "gender":
            assert t.classes == ["F", "M"] and t.classes[label] == truth[uid]
        elif task == "age":
            assert label == int(age_bucket([truth[uid]])[0])
        else:
            assert t.classes[label] == truth[uid]
    if task == "occupation":
        assert t.n_classes == 21
    assert t.rows.shape == (943, 30) and t.rows.dtype == np.int64


def test_user_rows_are_the_most_recent_items_left_padded(events, vocab):
    t = build_user_task("gender", events, ML / "users.parquet", vocab, max_len=30)
    ordered = events.with_row_index("o").sort(["user_id", "timestamp", "o"])
    for i in (0, 5, 500):
        uid = int(t.user_ids[i])
        items = ordered.filter(pl.col("user_id") == uid)["item_id"].to_numpy()[-30:]
        row = t.rows[i]
        real = row[row != PAD]
        assert vocab.decode(real).tolist() == items.tolist()
        assert (row[: 30 - len(real)] == PAD).all()


def test_ctr_history_is_strictly_before_the_candidate(ctr, events, vocab):
    for split in (ctr.train, ctr.val, ctr.test):
        assert len(split) > 0
        assert (split.history_max_time < split.times).all()
    # reconstruct a sample of histories from the raw events
    ordered = events.with_row_index("o").sort(["user_id", "timestamp", "o"])
    rng = np.random.default_rng(0)
    for split in (ctr.train, ctr.test):
        for i in rng.choice(len(split), 40, replace=False):
            uid, t = int(split.user_ids[i]), int(split.times[i])
            mine = ordered.filter(pl.col("user_id") == uid)
            before = mine.filter(pl.col("timestamp") < t)["item_id"].to_numpy()[-20:]
            row = split.rows[i]
            assert vocab.decode(row[row != PAD]).tolist() == before.tolist()
            ev = ordered.row(int(split.event_index[i]), named=True)
            assert ev["user_id"] == uid and ev["timestamp"] == t
            assert split.labels[i] == float(ev["rating"] >= 4)
            assert split.candidates[i] == vocab.encode([ev["item_id"]])[0]
            # baseline features also only look at the past
            hist = mine.filter(pl.col("timestamp") < t)
            assert math.isclose(split.features[i, 0], hist["rating"].cast(pl.Float64).mean(), rel_tol=1e-9)
            pop = events.filter((pl.col("item_id") == ev["item_id"]) & (pl.col("timestamp") < t)).height
            assert math.isclose(split.features[i, 1], math.log1p(pop), rel_tol=1e-9)


def test_ctr_split_is_per_user_by_time(ctr, events):
    counts = dict(events.group_by("user_id").len().iter_rows())
    test_counts = pl.DataFrame({"u": ctr.test.user_ids}).group_by("u").len()
    for uid, n_test in test_counts.iter_rows():
        assert n_test <= math.ceil(0.2 * counts[uid])
    # every test event of a user comes after all of that user's train / val events
    last_train = pl.DataFrame({"u": np.r_[ctr.train.user_ids, ctr.val.user_ids],
                               "i": np.r_[ctr.train.event_index, ctr.val.event_index],
                               "t": np.r_[ctr.train.times, ctr.val.times]}).group_by("u").agg(
        pl.col("i").max(), pl.col("t").max())
    first_test = pl.DataFrame({"u": ctr.test.user_ids, "i": ctr.test.event_index, "t": ctr.test.times}) \
        .group_by("u").agg(pl.col("i").min().alias("ti"), pl.col("t").min().alias("tt"))
    joined = last_train.join(first_test, on="u")
    assert (joined["i"] < joined["ti"]).all() and (joined["t"] <= joined["tt"]).all()
    assert ctr.info["test"] == len(ctr.test) and 0.3 < ctr.info["positive_rate_test"] < 0.7


def test_ctr_ties_never_enter_the_history():
    df = pl.DataFrame({"user_id": [1] * 6, "item_id": [10, 11, 12, 13, 14, 15],
                       "timestamp": [5, 5, 7, 7, 7, 9], "rating": [5, 1, 4, 3, 5, 2]})
    vocab = ItemVocab.build(df["item_id"])
    task = build_ctr_task(df, vocab, max_len=10, test_fraction=0.3, val_fraction=0.01)
    everything = [task.train, task.val, task.test]
    hist = {int(vocab.decode([c])[0]): vocab.decode(r[r != PAD]).tolist()
            for s in everything for r, c in zip(s.rows, s.candidates)}
    # items 10 and 11 (time 5) have no strictly earlier event: no sample
    assert hist == {12: [10, 11], 13: [10, 11], 14: [10, 11], 15: [10, 11, 12, 13, 14]}
    assert sorted(int(vocab.decode([c])[0]) for c in task.test.candidates) == [14, 15]


def test_unknown_task_and_missing_rating_are_data_errors(events, vocab):
    with pytest.raises(DataError, match="unknown user task"):
        build_user_task("zip", events, ML / "users.parquet", vocab, 10)
    with pytest.raises(DataError, match="rating"):
        build_ctr_task(events.drop("rating"), vocab, 10)


def test_ctr_pretraining_events_exclude_the_test_part(ctr, events):
    from recbert.data.tasks import ctr_pretraining_events

    pre = ctr_pretraining_events(events)
    n_test_events = sum(int(np.ceil(0.2 * n)) for _, n in events.group_by("user_id").len().iter_rows())
    assert pre.height == events.height - n_test_events
    last_pre = pre.group_by("user_id").agg(pl.col("timestamp").max().alias("t"))
    first_test = pl.DataFrame({"user_id": ctr.test.user_ids, "tt": ctr.test.times}).group_by("user_id").agg(
        pl.col("tt").min())
    joined = last_pre.join(first_test, on="user_id")
    assert (joined["t"] <= joined["tt"]).all()
    assert set(pre.columns) == {"user_id", "item_id", "timestamp", "rating"}

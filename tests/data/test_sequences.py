"""Per-user sequences and the leave-one-out / global time splits, checked against
brute-force per-user computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recbert.data.sequences import (EvalSet, Sequences, build_sequences, leave_one_out, time_split,
                                    with_validation_targets)
from recbert.data.vocab import UNK, ItemVocab
from recbert.errors import DataError


def random_events(seed: int = 0, n_users: int = 60, n_items: int = 40, max_len: int = 12) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in rng.permutation(n_users):
        n = int(rng.integers(1, max_len + 1))
        users += [int(u) * 7 + 3] * n
        items += rng.integers(100, 100 + n_items, n).tolist()
        times += rng.integers(0, 30, n).tolist()  # many ties within a user
    order = rng.permutation(len(users))  # interleave users in the file
    return pl.DataFrame({
        "user_id": np.array(users)[order], "item_id": np.array(items)[order], "timestamp": np.array(times)[order],
    })


def brute_sequences(events: pl.DataFrame, vocab: ItemVocab) -> dict[int, tuple[list[int], list[int]]]:
    """user -> (tokens, times) sorted by time, ties in file order."""
    per_user: dict[int, list[tuple[int, int, int]]] = {}
    for pos, (u, i, t) in enumerate(events.iter_rows()):
        per_user.setdefault(u, []).append((t, pos, i))
    out = {}
    for u, evs in per_user.items():
        evs.sort()
        out[u] = (vocab.encode([e[2] for e in evs]).tolist(), [e[0] for e in evs])
    return out


def as_dict(seqs: Sequences) -> dict[int, list[int]]:
    return {int(u): seqs.row(k).tolist() for k, u in enumerate(seqs.user_ids)}


def test_build_sequences_sorts_by_time_with_stable_ties():
    events = pl.DataFrame({
        "user_id": [2, 1, 2, 1, 1, 2, 1],
        "item_id": [10, 20, 30, 40, 50, 60, 70],
        "timestamp": [5, 3, 5, 1, 3, 4, 3],
    })
    vocab = ItemVocab([10, 20, 30, 40, 50, 60, 70])  # token = 3 + position
    seqs = build_sequences(events, vocab)
    assert seqs.user_ids.tolist() == [1, 2]
    # user 1: t=1 (40), then ties at t=3 in file order: 20, 50, 70
    assert seqs.row(0).tolist() == vocab.encode([40, 20, 50, 70]).tolist()
    # user 2: t=4 (60), then ties at t=5 in file order: 10, 30
    assert seqs.row(1).tolist() == vocab.encode([60, 10, 30]).tolist()
    assert seqs.times.tolist() == [1, 3, 3, 3, 4, 5, 5]
    assert seqs.offsets.tolist() == [0, 4, 7]


def test_build_sequences_matches_brute_force_and_drops_short_users():
    events = random_events(1)
    vocab = ItemVocab.build(events["item_id"], min_count=10)
    assert 0 < vocab.n_items < events["item_id"].n_unique()
    expected = brute_sequences(events, vocab)
    seqs = build_sequences(events, vocab, min_user_events=4)
    kept = {u: v for u, v in expected.items() if len(v[0]) >= 4}
    assert 0 < len(kept) < len(expected)
    assert as_dict(seqs) == {u: v[0] for u, v in kept.items()}
    for k, u in enumerate(seqs.user_ids):
        assert seqs.times[seqs.offsets[k]:seqs.offsets[k + 1]].tolist() == kept[int(u)][1]
    assert len(seqs.items) == len(seqs.times) == seqs.offsets[-1]
    assert (seqs.items == UNK).any()  # min_count produced UNK tokens, kept in place


def test_build_sequences_with_no_user_left():
    events = pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1, 2]})
    with pytest.raises(DataError, match="min_user_events"):
        build_sequences(events, ItemVocab.build(events["item_id"]), min_user_events=2)


def test_leave_one_out_against_brute_force():
    events = random_events(2)
    vocab = ItemVocab.build(events["item_id"])
    seqs = build_sequences(events, vocab)
    full = as_dict(seqs)
    splits = leave_one_out(seqs)

    train = as_dict(splits.train)
    assert set(train) == set(full)  # every user trains, short ones on everything
    val_in, test_in = as_dict(splits.val.inputs), as_dict(splits.test.inputs)
    val_t = dict(zip(splits.val.inputs.user_ids.tolist(), splits.val.targets.tolist()))
    test_t = dict(zip(splits.test.inputs.user_ids.tolist(), splits.test.targets.tolist()))
    evaluated = {u for u, s in full.items() if len(s) >= 3}
    assert set(val_in) == set(test_in) == set(val_t) == set(test_t) == evaluated
    assert any(len(s) < 3 for s in full.values())
    for u, s in full.items():
        if len(s) < 3:
            assert train[u] == s
            continue
        assert test_t[u] == s[-1]
        assert val_t[u] == s[-2]
        assert train[u] == s[:-2]  # neither target in the training part
        assert val_in[u] == s[:-2]  # val input stops before the val target
        assert test_in[u] == s[:-1]  # test input stops before the test target
        assert len(train[u]) + 2 == len(s)
    # train times stay aligned with train items
    assert len(splits.train.times) == len(splits.train.items)


def test_leave_one_out_positions_exact_on_small_case():
    events = pl.DataFrame({"user_id": [1] * 5 + [2] * 2, "item_id": [1, 2, 3, 4, 5, 6, 7],
                           "timestamp": [1, 2, 3, 4, 5, 1, 2]})
    vocab = ItemVocab(list(range(1, 8)))
    s = leave_one_out(build_sequences(events, vocab))
    assert as_dict(s.train) == {1: [3, 4, 5], 2: [8, 9]}
    assert s.val.targets.tolist() == [6] and s.test.targets.tolist() == [7]
    assert as_dict(s.val.inputs) == {1: [3, 4, 5]} and as_dict(s.test.inputs) == {1: [3, 4, 5, 6]}


def test_leave_one_out_without_evaluable_users():
    events = pl.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    with pytest.raises(DataError, match="3 or more"):
        leave_one_out(build_sequences(events, ItemVocab.build(events["item_id"])))


def test_time_split_against_brute_force():
    rng = np.random.default_rng(3)
    n = 1500
    events = pl.DataFrame({
        "user_id": rng.integers(0, 80, n),
        "item_id": rng.integers(0, 50, n),
        "timestamp": rng.integers(0, 400, n),  # ties across and within users
    })
    vocab = ItemVocab.build(events["item_id"])
    seqs = build_sequences(events, vocab)
    splits = time_split(seqs, val_fraction=0.15, test_fraction=0.1)

    times = events["timestamp"].to_numpy()
    t_val, t_test = np.quantile(times, [0.75, 0.9])
    # the cuts sit at the quantiles: about 75% / 90% of the events come before them
    assert abs(np.mean(times < t_val) - 0.75) < 0.02
    assert abs(np.mean(times < t_test) - 0.90) < 0.02

    exp_train, exp_val, exp_test = {}, {}, {}
    for u, (toks, ts) in brute_sequences(events, vocab).items():
        ts = np.array(ts)
        pre_val = [x for x, t in zip(toks, ts) if t < t_val]
        pre_test = [x for x, t in zip(toks, ts) if t < t_test]
        if pre_val:
            exp_train[u] = pre_val
            nxt = [(x, t) for x, t in zip(toks, ts) if t >= t_val]
            if nxt and nxt[0][1] < t_test:
                exp_val[u] = (pre_val, nxt[0][0])
        if pre_test:
            nxt = [x for x, t in zip(toks, ts) if t >= t_test]
            if nxt:
                exp_test[u] = (pre_test, nxt[0])

    assert as_dict(splits.train) == exp_train
    assert (splits.train.times < t_val).all()  # no training event at/after the val cut
    got_val = {int(u): (splits.val.inputs.row(k).tolist(), int(splits.val.targets[k]))
               for k, u in enumerate(splits.val.inputs.user_ids)}
    got_test = {int(u): (splits.test.inputs.row(k).tolist(), int(splits.test.targets[k]))
                for k, u in enumerate(splits.test.inputs.user_ids)}
    assert got_val == exp_val and got_test == exp_test
    assert len(exp_val) > 10 and len(exp_test) > 10
    assert (splits.val.inputs.times < t_val).all()
    assert (splits.test.inputs.times < t_test).all()


def test_time_split_targets_are_first_events_after_cuts():
    # times 0..9 for one user, 0..9 shifted for another; cuts at quantiles 0.8 / 0.9
    events = pl.DataFrame({"user_id": [1] * 10 + [2] * 10, "item_id": list(range(10)) * 2,
                           "timestamp": list(range(10)) * 2})
    vocab = ItemVocab(list(range(10)))
    s = time_split(build_sequences(events, vocab), val_fraction=0.1, test_fraction=0.1)
    t_val, t_test = np.quantile(np.arange(10).repeat(2), [0.8, 0.9])  # 7.2, 8.1
    assert (t_val, t_test) == pytest.approx((7.2, 8.1))
    assert as_dict(s.train) == {1: [3, 4, 5, 6, 7, 8, 9, 10], 2: [3, 4, 5, 6, 7, 8, 9, 10]}
    assert s.val.targets.tolist() == [11, 11]  # item 8 (t=8) is first in [7.2, 8.1)
    assert s.test.targets.tolist() == [12, 12]  # item 9 (t=9) is first at/after 8.1
    assert s.test.inputs.row(0).tolist() == list(range(3, 12))


def test_time_split_needs_times():
    seqs = Sequences(np.array([1]), np.array([3, 4, 5]), np.array([0, 3]))
    with pytest.raises(DataError, match="times"):
        time_split(seqs)


def make_seqs() -> Sequences:
    items = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11])
    return Sequences(np.array([10, 20, 30, 40]), items, np.array([0, 2, 2, 6, 9]), times=items * 100)


def test_select_by_mask_and_index():
    s = make_seqs()
    m = s.select(np.array([True, False, True, True]))
    assert m.user_ids.tolist() == [10, 30, 40]
    assert [m.row(k).tolist() for k in range(3)] == [[3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert m.times.tolist() == [x * 100 for x in [3, 4, 5, 6, 7, 8, 9, 10, 11]]
    i = s.select(np.array([3, 1, 0]))  # order of the index array is kept
    assert i.user_ids.tolist() == [40, 20, 10]
    assert i.offsets.tolist() == [0, 3, 3, 5]
    assert i.items.tolist() == [9, 10, 11, 3, 4]
    assert i.times.tolist() == [900, 1000, 1100, 300, 400]
    assert s.select(np.array([False] * 4)).offsets.tolist() == [0]


def test_slice_flat_positions():
    s = make_seqs()
    out = s.slice(np.array([6, 1, 3]), np.array([8, 1, 6]), np.array([7, 8, 9]))
    assert out.user_ids.tolist() == [7, 8, 9]
    assert out.lengths.tolist() == [2, 0, 3]
    assert out.items.tolist() == [9, 10, 6, 7, 8]
    assert out.times.tolist() == [900, 1000, 600, 700, 800]
    assert out.row(1).tolist() == []
    untimed = Sequences(s.user_ids, s.items, s.offsets)
    assert untimed.slice(np.array([0]), np.array([2]), np.array([1])).times is None


def _seqs(rows, users=None):
    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    users = np.array(users if users is not None else list(range(len(rows))))
    return Sequences(users, np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]), offsets)


def test_with_validation_targets_appends_each_validation_target_to_its_users_row():
    full = _seqs([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15, 16, 17, 18]], users=["a", "b", "c", "d"])
    splits = leave_one_out(full)
    merged = with_validation_targets(splits.train, splits.val)
    assert merged.user_ids.tolist() == ["a", "b", "c", "d"]
    # evaluated users: everything but the test target; the short user 'b' keeps all its events
    assert [merged.row(u).tolist() for u in range(4)] == [[5, 6, 7, 8], [10, 11], [12, 13], [15, 16, 17]]
    for u in (0, 2, 3):  # exactly the test input
        t = list(splits.test.inputs.user_ids).index(merged.user_ids[u])
        assert merged.row(u).tolist() == splits.test.inputs.row(t).tolist()


def test_with_validation_targets_adds_rows_for_validation_users_without_training_rows():
    train = _seqs([[1, 2], [3]], users=[7, 8])
    val = EvalSet(_seqs([[3], [4, 5]], users=[8, 9]), np.array([30, 50], dtype=np.int64))
    merged = with_validation_targets(train, val)
    assert merged.user_ids.tolist() == [7, 8, 9]
    assert [merged.row(u).tolist() for u in range(3)] == [[1, 2], [3, 30], [4, 5, 50]]
    assert merged.lengths.sum() == train.lengths.sum() + 2 + 2  # each target once, user 9's input once

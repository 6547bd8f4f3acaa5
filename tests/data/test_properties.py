"""Property-based checks (hypothesis) of the importer and of sequence building: every
event lands in exactly one sequence position, in time order, or is reported as dropped."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbert.data.importers import import_s3rec
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.vocab import ItemVocab

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

events_lists = st.lists(st.tuples(st.integers(0, 12), st.integers(-5, 30), st.integers(0, 6)), min_size=1,
                        max_size=120)


def frame(rows) -> pl.DataFrame:
    users, items, times = zip(*rows)
    return pl.DataFrame({"user_id": list(users), "item_id": list(items), "timestamp": list(times)},
                        schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64})


@SETTINGS
@given(rows=events_lists, min_events=st.integers(1, 4))
def test_every_event_lands_in_one_position_or_is_reported_dropped(rows, min_events, caplog):
    events = frame(rows)
    vocab = ItemVocab.build(events["item_id"])
    per_user = Counter(u for u, _, _ in rows)
    kept_users = {u for u, n in per_user.items() if n >= min_events}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recbert"):
        try:
            seqs = build_sequences(events, vocab, min_events)
        except Exception as exc:  # nobody has enough events: the one reported error
            assert not kept_users and "no user has at least" in str(exc)
            return
    dropped = [u for u in per_user if u not in kept_users]
    if dropped:
        n_events = sum(per_user[u] for u in dropped)
        assert f"dropped {len(dropped)} user(s) with fewer than {min_events} events ({n_events} events)" in caplog.text
    assert set(seqs.user_ids.tolist()) == kept_users and len(seqs.items) == sum(per_user[u] for u in kept_users)
    for u in range(len(seqs)):
        user = int(seqs.user_ids[u])
        # this user's events, in time order, ties in file order: exactly the sequence's positions
        expected = [i for _, _, i in sorted((t, k, i) for k, (uu, i, t) in enumerate(rows) if uu == user)]
        lo, hi = seqs.offsets[u], seqs.offsets[u + 1]
        assert vocab.decode(seqs.items[lo:hi]).tolist() == expected
        assert np.all(np.diff(seqs.times[lo:hi]) >= 0)


@SETTINGS
@given(rows=events_lists)
def test_leave_one_out_splits_each_long_sequence_into_train_validation_and_test(rows):
    events = frame(rows)
    seqs = build_sequences(events, ItemVocab.build(events["item_id"]))
    if not (seqs.lengths >= 3).any():
        return
    splits = leave_one_out(seqs)
    long = np.flatnonzero(seqs.lengths >= 3)
    assert len(splits.test) == len(splits.val) == len(long) and len(splits.train) == len(seqs)
    for j, u in enumerate(long):
        full = seqs.row(u).tolist()
        assert splits.test.inputs.row(j).tolist() + [int(splits.test.targets[j])] == full
        assert splits.val.inputs.row(j).tolist() + [int(splits.val.targets[j])] == full[:-1]
        assert splits.train.row(u).tolist() == full[:-2]
    short = np.flatnonzero(seqs.lengths < 3)
    for u in short:  # trained on whole, never evaluated
        assert splits.train.row(u).tolist() == seqs.row(u).tolist()


@SETTINGS
@given(lines=st.lists(st.lists(st.integers(0, 10**6), min_size=1, max_size=15), min_size=1, max_size=20,
                      unique_by=lambda line: line[0]))
def test_the_s3rec_importer_keeps_every_item_of_every_line_in_order(lines, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3rec")
    src = folder / "data.txt"
    kept = [line for line in lines if len(line) > 1]  # a user id and at least one item
    if not kept:
        return
    src.write_text("".join(f"{line[0]} {' '.join(map(str, line[1:]))}\n" for line in kept))
    import_s3rec(src, folder / "out")
    events = pl.read_parquet(folder / "out" / "events.parquet")
    expected = [(line[0], item, pos) for line in kept for pos, item in enumerate(line[1:])]
    got = list(zip(events["user_id"].to_list(), events["item_id"].to_list(), events["timestamp"].to_list()))
    assert sorted(got) == sorted(expected) and len(got) == len(expected)

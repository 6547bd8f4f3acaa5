"""cut_before_holdout: a broad log that holds nothing the target split holds out."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recbert.config import DataConfig
from recbert.cli import main
from recbert.data.holdout import cut_before_holdout
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.vocab import ItemVocab
from recbert.errors import DataError

LOO = DataConfig()


def frame(rows):
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


def test_leave_one_out_keeps_each_users_events_before_the_validation_event():
    target = frame([(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (1, 14, 5),  # validation at t=4
                    (2, 10, 1), (2, 11, 2),  # 2 events: trains, is not evaluated
                    (4, 10, 1), (4, 11, 2), (4, 12, 3), (4, 13, 3)])  # tie: validation is (12, t=3)
    broad = frame([(1, i, t) for i, t in zip(range(20, 31), range(0, 11))]
                  + [(2, 50, 9), (3, 60, 1), (3, 61, 99), (4, 70, 2), (4, 71, 3), (4, 72, 4)])
    kept = cut_before_holdout(broad, target, LOO)
    assert kept.filter(pl.col("user_id") == 1)["timestamp"].to_list() == [0, 1, 2, 3]
    assert kept.filter(pl.col("user_id") == 2)["item_id"].to_list() == [50]  # not evaluated: all kept
    assert kept.filter(pl.col("user_id") == 3)["item_id"].to_list() == [60, 61]  # not in the target log
    assert kept.filter(pl.col("user_id") == 4)["item_id"].to_list() == [70]  # strictly before the tie
    assert kept.columns == broad.columns


def test_no_kept_event_is_at_or_after_what_leave_one_out_holds_out():
    rng = np.random.default_rng(0)
    n = 3000
    broad = pl.DataFrame({"user_id": rng.integers(0, 80, n), "item_id": rng.integers(0, 200, n),
                          "timestamp": rng.integers(0, 50, n)})  # many ties
    target = broad.filter(pl.col("item_id") % 3 == 0)  # the "positive" events
    kept = cut_before_holdout(broad, target, LOO)
    seqs = build_sequences(target, ItemVocab.build(target["item_id"]))
    splits_val_start = {int(u): int(seqs.times[e - 2]) for u, e, n_ in
                        zip(seqs.user_ids, seqs.offsets[1:], seqs.lengths) if n_ >= 3}
    assert len(splits_val_start) > 50 and len(leave_one_out(seqs).val) == len(splits_val_start)
    latest = kept.group_by("user_id").agg(pl.col("timestamp").max())
    for user, t in latest.iter_rows():
        if user in splits_val_start:
            assert t < splits_val_start[user]
    # and nothing more was dropped than that rule drops
    expected = sum(1 for u, t in broad.select("user_id", "timestamp").iter_rows()
                   if u not in splits_val_start or t < splits_val_start[u])
    assert kept.height == expected < broad.height


def test_time_split_cuts_at_the_validation_quantile():
    target = frame([(1, 1, t) for t in range(100)])
    broad = frame([(1, 2, t) for t in range(0, 200, 5)])
    cfg = DataConfig(split="time", time_val_fraction=0.1, time_test_fraction=0.1)
    kept = cut_before_holdout(broad, target, cfg)
    assert kept["timestamp"].max() < np.quantile(np.arange(100), 0.8) <= kept["timestamp"].max() + 5
    # a user the split drops (one event, under data.min_user_events) does not move the cut
    late = pl.concat([target, frame([(u, 1, 1000 + u) for u in range(2, 60)])])
    assert cut_before_holdout(broad, late, cfg).equals(kept)


def test_mismatched_ids_and_missing_columns_are_named():
    target = frame([(1, 1, 1), (1, 2, 2), (1, 3, 3)])
    broad = target.with_columns(pl.col("user_id").cast(pl.String))
    with pytest.raises(DataError, match="broad log's 'user_id' is String but the target log's is Int64"):
        cut_before_holdout(broad, target, LOO)
    with pytest.raises(DataError, match=r"the broad log has no column\(s\) \['timestamp'\]"):
        cut_before_holdout(target.drop("timestamp"), target, LOO)


def test_cut_broad_writes_the_cut_of_parquet_files_and_names_them_in_errors(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 2000
    broad = pl.DataFrame({"user_id": rng.integers(0, 50, n), "item_id": rng.integers(0, 90, n),
                          "timestamp": rng.integers(0, 40, n), "rating": rng.integers(1, 6, n)})
    target = broad.filter(pl.col("rating") >= 4).drop("rating")
    folder = tmp_path / "broad"
    folder.mkdir()
    broad.head(900).write_parquet(folder / "a.parquet")
    broad.slice(900).write_parquet(folder / "b.parquet")
    target.write_parquet(tmp_path / "target.parquet")
    out = tmp_path / "cut.parquet"
    args = ["cut-broad", "--broad", str(folder), "--target", str(tmp_path / "target.parquet"), "--out", str(out)]
    assert main(args) == 0
    expected = cut_before_holdout(broad, target, LOO)
    assert pl.read_parquet(out).sort(pl.all()).equals(expected.sort(pl.all()))  # every column kept
    assert f"kept {expected.height} of {n} broad events (split: leave_one_out)" in capsys.readouterr().out
    assert 0 < expected.height < n

    out.write_bytes(b"the previous cut")
    target.rename({"timestamp": "ts"}).write_parquet(tmp_path / "bad.parquet")
    assert main([*args[:4], str(tmp_path / "bad.parquet"), *args[5:]]) != 0
    err = capsys.readouterr().err
    assert f"the target log {tmp_path / 'bad.parquet'} has no column(s) ['timestamp']" in err
    assert len(err.strip().splitlines()) == 1 and out.read_bytes() == b"the previous cut"
    target.with_columns(pl.col("timestamp").cast(pl.Float64)).write_parquet(tmp_path / "float.parquet")
    assert main([*args[:4], str(tmp_path / "float.parquet"), *args[5:]]) != 0
    assert "'timestamp' is Int64 but the target log" in capsys.readouterr().err

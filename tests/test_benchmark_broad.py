"""The broad-pretraining benchmark's logs: the target is the positive ratings, the broad
log holds no rating at or after a user's held-out target events (the figures themselves
are the benchmark's, not a test's)."""

from __future__ import annotations

import sys

import polars as pl
import pytest

from recbert.config import DataConfig
from recbert.data.sequences import build_sequences
from recbert.data.vocab import ItemVocab
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import broad_pretraining  # noqa: E402


def test_the_broad_log_ends_before_each_users_held_out_target_events(tmp_path):
    target_path, broad_path, sizes = broad_pretraining.write_logs(broad_pretraining.EVENTS, 4, tmp_path, DataConfig())
    target, broad = pl.read_parquet(target_path), pl.read_parquet(broad_path)
    assert target["rating"].min() == 4 and sizes["target"] == target.height < sizes["broad"] < sizes["ratings"]
    seqs = build_sequences(target, ItemVocab.build(target["item_id"]), min_user_events=2)
    held_out = pl.DataFrame({"user_id": seqs.user_ids, "start": seqs.times[seqs.offsets[1:] - 2]})
    latest = broad.group_by("user_id").agg(pl.col("timestamp").max().alias("last")).join(held_out, on="user_id")
    assert latest.height > 900 and (latest["last"] < latest["start"]).all()
    # every target training event (before the held-out ones) is in the broad log too
    train = target.join(held_out, on="user_id").filter(pl.col("timestamp") < pl.col("start"))
    assert train.join(broad, on=["user_id", "item_id", "timestamp"], how="anti").height == 0


def test_the_target_can_be_one_attributes_items_of_a_log_without_ratings(tmp_path):
    # Beauty's shape: no rating column, a list of integer attributes per item
    events = pl.DataFrame({"user_id": [1] * 5 + [2] * 4, "item_id": [10, 11, 12, 13, 14, 10, 12, 14, 11],
                           "timestamp": [0, 1, 2, 3, 4, 0, 1, 2, 3]})
    items = pl.DataFrame({"item_id": [10, 11, 12, 13, 14], "attributes": [[7, 1], [2], [7], [3], [7, 9]]})
    events.write_parquet(tmp_path / "events.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    target_path, broad_path, sizes = broad_pretraining.write_logs(
        tmp_path / "events.parquet", None, tmp_path / "work", DataConfig(), ("attributes", "7"), tmp_path / "items.parquet")
    target, broad = pl.read_parquet(target_path), pl.read_parquet(broad_path)
    assert set(target["item_id"]) == {10, 12, 14} and sizes["target"] == 6
    # user 1's held-out target events start at item 12 (time 2), user 2's at item 12 (time 1)
    assert broad.sort("user_id", "timestamp")["item_id"].to_list() == [10, 11, 10]
    with pytest.raises(SystemExit, match="no rating column"):
        broad_pretraining.write_logs(tmp_path / "events.parquet", 4, tmp_path / "w2", DataConfig())
    with pytest.raises(SystemExit, match="holds Int64, and 'x' is not one"):
        broad_pretraining.items_with(tmp_path / "items.parquet", "attributes", "x")
    with pytest.raises(SystemExit, match="no item in .* has '8'"):
        broad_pretraining.items_with(tmp_path / "items.parquet", "attributes", "8")

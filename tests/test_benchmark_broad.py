"""The broad-pretraining benchmark's logs: the target is the positive ratings, the broad
log holds no rating at or after a user's held-out target events (the figures themselves
are the benchmark's, not a test's)."""

from __future__ import annotations

import sys

import polars as pl

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

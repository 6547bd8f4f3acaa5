"""Streaming training windows from shards: every window exactly once per epoch across
ranks and DataLoader workers, the same windows as in memory, the same number of steps on
every rank, deterministic for a seed, and a shard lost mid-run named in the error."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from recbert.config import DataConfig
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.shards import write_shards
from recbert.data.streaming import ShardWindows
from recbert.data.vocab import PAD
from recbert.data.window_sources import MemoryWindows
from recbert.errors import ConfigError, DataError
from tests.conftest import cyclic_events

SPAN, STRIDE, MIN_LEN, BATCH = 9, 4, 2, 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    events = cyclic_events(n_users=180, seed=3, min_len=1, max_len=40)
    events.write_parquet(tmp / "events.parquet")
    data = DataConfig(events=str(tmp / "events.parquet"), shard_events=800)
    return write_shards(data.events, tmp / "shards", data, row_group_users=8), events


def windows_of(batches) -> Counter:
    return Counter(tuple(int(t) for t in row if t != PAD) for b in batches for row in b.numpy())


def stream(shards, rank=0, world=1, workers=0, seed=5, buffer=3):
    return ShardWindows(shards, SPAN, STRIDE, MIN_LEN, BATCH, seed, rank, world, buffer, workers)


def test_the_stream_holds_the_windows_of_the_in_memory_path(shards):
    shard_set, events = shards
    vocab = shard_set.vocab()
    train = leave_one_out(build_sequences(events, vocab, DataConfig().min_user_events)).train
    memory = MemoryWindows(train, SPAN, STRIDE, MIN_LEN, BATCH)
    assert len(stream(shard_set)) == len(memory)
    assert windows_of(stream(shard_set).rows(1)) == windows_of(memory.rows(1))
    assert np.array_equal(stream(shard_set).item_counts(vocab.n_items), memory.item_counts(vocab.n_items))


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 0), (3, 2)])
def test_every_window_once_per_epoch_across_ranks_and_workers(shards, world, workers):
    shard_set, _ = shards
    whole = windows_of(stream(shard_set).rows(1))
    for epoch in (1, 2):
        per_rank = [list(stream(shard_set, r, world, workers).rows(epoch)) for r in range(world)]
        steps = {len(b) for b in per_rank}
        assert steps == {stream(shard_set, 0, world).steps_per_epoch}  # the same number on every rank
        assert sum((windows_of(b) for b in per_rank), Counter()) == whole
        local = math.ceil(BATCH / world)
        sizes = [len(x) for b in per_rank for x in b]
        assert min(sizes) >= 1 and sorted(sizes)[-2] <= local + 1


def test_a_batch_holds_the_same_windows_whatever_the_number_of_workers(shards):
    shard_set, _ = shards

    def batches(workers):
        return sorted(sorted(map(tuple, b.numpy().tolist())) for b in stream(shard_set, workers=workers).rows(1))
    assert batches(0) == batches(2)


def test_the_order_is_seeded_and_changes_each_epoch(shards):
    shard_set, _ = shards

    def first_rows(seed, epoch):
        return [b.numpy().tolist() for b in stream(shard_set, seed=seed).rows(epoch)][:3]
    assert first_rows(5, 1) == first_rows(5, 1)
    assert first_rows(5, 1) != first_rows(5, 2)
    assert first_rows(5, 1) != first_rows(6, 1)


def test_more_ranks_than_windows_is_a_config_error(shards):
    with pytest.raises(ConfigError, match="cannot be shared by 100000 processes"):
        stream(shards[0], world=100_000)


def test_a_shard_lost_mid_run_is_named(shards, tmp_path):
    shard_set, events = shards
    events.write_parquet(tmp_path / "events.parquet")
    data = DataConfig(events=str(tmp_path / "events.parquet"), shard_events=800)
    copy = write_shards(data.events, tmp_path / "shards", data, row_group_users=8)
    windows = stream(copy)
    (copy.directory / copy.files[-1]).unlink()
    with pytest.raises(DataError, match=f"shard .*{copy.files[-1]} is missing or unreadable"):
        list(windows.rows(1))

"""Events -> sequence shards: the same vocabulary, sequences, splits and counts as the
in-memory path; reuse by fingerprint; bad folders and files named in one error."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recbert.config import DataConfig, RunConfig
from recbert.data.prepare import prepare_data
from recbert.data.shards import MANIFEST_FILE, ensure_shards, open_shards, write_shards
from recbert.data.vocab import UNK, ItemVocab
from recbert.errors import DataError
from tests.conftest import cyclic_events


def events_folder(tmp_path: Path, n_users: int = 150, seed: int = 0, string_ids: bool = False) -> Path:
    """A hive-partitioned folder of events, with a few exact duplicates and short users."""
    df = cyclic_events(n_users=n_users, seed=seed, min_len=1, max_len=30)
    df = pl.concat([df, df.head(7)])  # duplicates
    if string_ids:
        df = df.with_columns(pl.format("u{}", "user_id").alias("user_id"), pl.format("i{}", "item_id").alias("item_id"))
    folder = tmp_path / "events"
    for part in range(3):
        (folder / f"p={part}").mkdir(parents=True)
        df.gather_every(3, offset=part).write_parquet(folder / f"p={part}" / "0.parquet")
    return folder


def by_user(eval_set) -> dict:
    s = eval_set.inputs
    return {u: (s.row(i).tolist(), int(t)) for i, (u, t) in enumerate(zip(s.user_ids.tolist(), eval_set.targets))}


@pytest.mark.parametrize("string_ids,cap", [(False, {}), (True, {}), (False, {"max_items": 25, "hash_buckets": 4})])
def test_shards_hold_what_the_in_memory_path_builds(tmp_path, string_ids, cap):
    folder = events_folder(tmp_path, string_ids=string_ids)
    data = DataConfig(events=str(folder), shards=str(tmp_path / "shards"), shard_events=400, min_user_events=2, **cap)
    shards = write_shards(folder, data.shards, data, row_group_users=16)
    assert len(shards.files) > 1 and len(shards.units()) > len(shards.files)
    vocab, splits = prepare_data(RunConfig(data=DataConfig(events=str(folder), min_user_events=2, **cap)))
    assert shards.vocab().hash_buckets == cap.get("hash_buckets", 0)
    assert shards.vocab() == vocab and np.array_equal(shards.vocab().counts, vocab.counts)
    assert shards.n_users == len(splits.train) and shards.n_eval_users == len(splits.test)
    assert shards.n_events == len(splits.train.items) + 2 * len(splits.test)
    assert by_user(shards.eval_set("val")) == by_user(splits.val)
    assert by_user(shards.eval_set("test")) == by_user(splits.test)
    train = splits.train.items
    real = train[(train >= 3) & (train < 3 + vocab.n_items)]
    assert np.array_equal(shards.train_item_counts(), np.bincount(real - 3, minlength=vocab.n_items))
    rows = {u: s.row(i).tolist() for s in shards.iter_sequences() for i, u in enumerate(s.user_ids.tolist())}
    full = {u: splits.test.inputs.row(i).tolist() + [int(t)]
            for i, (u, t) in enumerate(zip(splits.test.inputs.user_ids.tolist(), splits.test.targets))}
    assert {u: rows[u] for u in full} == full


def test_prepare_data_with_shards_streams_training_and_reads_the_eval_users(tmp_path):
    folder = events_folder(tmp_path)
    cfg = RunConfig(data=DataConfig(events=str(folder), shards=str(tmp_path / "shards")))
    vocab, splits = prepare_data(cfg)
    assert splits.train == open_shards(tmp_path / "shards")
    _, memory = prepare_data(RunConfig(data=DataConfig(events=str(folder))))
    assert by_user(splits.test) == by_user(memory.test)


def test_shards_are_reused_for_the_same_events_and_settings_and_rewritten_otherwise(tmp_path):
    folder = events_folder(tmp_path)
    data = DataConfig(events=str(folder), shards=str(tmp_path / "shards"))
    first = ensure_shards(folder, data)
    written = (tmp_path / "shards" / MANIFEST_FILE).stat().st_mtime_ns
    assert ensure_shards(folder, data) == first
    assert (tmp_path / "shards" / MANIFEST_FILE).stat().st_mtime_ns == written
    other = ensure_shards(folder, DataConfig(events=str(folder), shards=data.shards, min_user_events=5))
    assert other.fingerprint != first.fingerprint and other.n_users < first.n_users
    f = next(folder.rglob("*.parquet"))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # the events changed
    assert ensure_shards(folder, data).fingerprint not in (first.fingerprint, other.fingerprint)


def test_shards_written_with_a_given_vocabulary_match_the_in_memory_path_and_are_reused_only_with_it(
        tmp_path, caplog):
    folder = events_folder(tmp_path)
    data = DataConfig(events=str(folder), shards=str(tmp_path / "shards"), shard_events=400)
    # a saved model's vocabulary: another log, which lacks some of these items and has others
    given = ItemVocab.build(pl.Series("item_id", [*range(10, 60), 900, 901]))
    shards = ensure_shards(folder, data, given)
    assert shards.vocab_given and shards.vocab() == given and len(shards.files) > 1
    vocab, memory = prepare_data(RunConfig(data=DataConfig(events=str(folder))), vocab=given)
    assert vocab is given
    assert by_user(shards.eval_set("val")) == by_user(memory.val)
    assert by_user(shards.eval_set("test")) == by_user(memory.test)
    streamed = np.concatenate([s.items for s in shards.iter_sequences()])
    assert (streamed == UNK).sum() > 0 and np.isin(streamed[streamed != UNK], given.encode(np.arange(10, 60))).all()

    manifest = tmp_path / "shards" / MANIFEST_FILE
    written = manifest.stat().st_mtime_ns
    assert ensure_shards(folder, data, given) == shards and manifest.stat().st_mtime_ns == written
    caplog.set_level(logging.INFO)
    built = ensure_shards(folder, data)  # a run without a saved model builds its own vocabulary
    assert "with one built from the events" in caplog.text
    assert not built.vocab_given and built.vocab() == prepare_data(RunConfig(data=DataConfig(events=str(folder))))[0]
    written = manifest.stat().st_mtime_ns
    assert ensure_shards(folder, data, built.vocab()) == built  # the same vocabulary, given: reused
    assert manifest.stat().st_mtime_ns == written
    caplog.clear()
    assert ensure_shards(folder, data, given).vocab() == given
    assert "another item vocabulary than the model's: writing them again" in caplog.text


def test_a_folder_that_does_not_hold_shards_is_never_replaced(tmp_path):
    folder = events_folder(tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="precious exists and does not hold recbert shards"):
        ensure_shards(folder, DataConfig(events=str(folder), shards=str(precious)))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_failed_write_leaves_the_previous_shards_whole(tmp_path):
    folder = events_folder(tmp_path)
    data = DataConfig(events=str(folder), shards=str(tmp_path / "shards"))
    before = write_shards(folder, data.shards, data)
    with pytest.raises(DataError, match="no user has at least 1000 events"):
        write_shards(folder, data.shards, DataConfig(events=str(folder), min_user_events=1000))
    assert open_shards(data.shards) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events", "shards"]  # no temporary left


def test_bad_events_are_named_once(tmp_path):
    data = DataConfig(shards=str(tmp_path / "shards"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cyclic_events(n_users=5).write_parquet(mixed / "a.parquet")
    cyclic_events(n_users=5).with_columns(pl.col("item_id").cast(pl.String)).write_parquet(mixed / "b.parquet")
    with pytest.raises(DataError, match="b.parquet does not have the schema of a.parquet"):
        write_shards(mixed, data.shards, data)
    nulls = tmp_path / "nulls.parquet"
    pl.DataFrame({"user_id": [1, None], "item_id": [1, 2], "timestamp": [1, 2]}).write_parquet(nulls)
    with pytest.raises(DataError, match="1 null value.*'user_id'"):
        write_shards(nulls, data.shards, data)
    empty = tmp_path / "empty.parquet"
    pl.DataFrame({"user_id": [], "item_id": [], "timestamp": []},
                 schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}).write_parquet(empty)
    with pytest.raises(DataError, match="holds no events"):
        write_shards(empty, data.shards, data)
    assert not (tmp_path / "shards").exists()


def test_a_damaged_shard_folder_is_named(tmp_path):
    folder = events_folder(tmp_path)
    shards = write_shards(folder, tmp_path / "shards", DataConfig(events=str(folder), shard_events=400))
    (shards.directory / shards.files[1]).unlink()
    with pytest.raises(DataError, match=f"{shards.files[1]} is missing"):
        open_shards(shards.directory)
    with pytest.raises(DataError, match=f"shard .*{shards.files[1]} is missing or unreadable"):
        list(shards.iter_sequences())
    manifest = shards.directory / MANIFEST_FILE
    manifest.write_text(json.dumps({"format": 99, "files": [], "rows": []}))
    with pytest.raises(DataError, match="manifest .* not readable .*format 99"):
        open_shards(shards.directory)
    manifest.unlink()
    with pytest.raises(DataError, match="has no manifest.json"):
        open_shards(shards.directory)


def test_streaming_supports_leave_one_out_only():
    from recbert.errors import ConfigError

    with pytest.raises(ConfigError, match="data.shards .* 'leave_one_out' only"):
        DataConfig(shards="s", split="time")

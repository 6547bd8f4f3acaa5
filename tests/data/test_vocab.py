"""ItemVocab: specials, frequency order, UNK handling, hash buckets, decode, persistence."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbert.data.vocab import MASK, N_SPECIAL, PAD, UNK, ItemVocab, catalogue_size, item_index, stable_hash
from recbert.errors import CheckpointError
from tests.conftest import REPO


def test_special_tokens():
    assert (PAD, MASK, UNK, N_SPECIAL) == (0, 1, 2, 3)
    v = ItemVocab.build(pl.Series([7, 8, 8]))
    assert len(v) == v.n_items + 3 == 5
    assert v.encode([8, 7]).tolist() == [3, 4]


def test_frequency_order_ties_by_first_appearance():
    items = pl.Series([50, 40, 30, 40, 30, 20, 30, 10, 10])
    v = ItemVocab.build(items)
    # counts: 30->3, 40->2, 10->2, 50->1, 20->1; ties keep first appearance (40 before 10, 50 before 20)
    assert v.item_ids.tolist() == [30, 40, 10, 50, 20]
    assert v.counts.tolist() == [3, 2, 2, 1, 1]
    assert v.encode([30, 40, 10, 50, 20]).tolist() == [3, 4, 5, 6, 7]


def test_min_count_maps_rare_items_to_unk():
    items = pl.Series(["a", "a", "b", "c", "c", "c", "d"])
    v = ItemVocab.build(items, min_count=2)
    assert v.item_ids.tolist() == ["c", "a"]
    assert v.encode(["a", "b", "c", "d"]).tolist() == [4, UNK, 3, UNK]


def test_vocabulary_cap_keeps_the_most_frequent_items():
    items = pl.Series([30, 40, 10, 30, 40, 30, 10, 50, 20])
    v = ItemVocab.build(items, max_items=2)
    assert v.item_ids.tolist() == [30, 40]  # 30 x3, then 40 and 10 x2: 40 came first
    assert v.encode([30, 40, 10, 50]).tolist() == [3, 4, UNK, UNK]
    assert ItemVocab.build(items, min_count=2, max_items=10).n_items == 3


def test_a_vocabulary_cap_of_zero_is_one_clear_error():
    from recbert.config import RunConfig
    from recbert.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.max_items \(the vocabulary cap\) must be >= 1"):
        RunConfig.load(None, ["data.max_items=0"])


def test_encode_unseen_ints_and_strings():
    vi = ItemVocab.build(pl.Series([5, 7, 7, 9]))
    assert vi.encode(np.array([7, 5, 9, 1234, -1])).tolist() == [3, 4, 5, UNK, UNK]
    assert vi.encode(pl.Series([9, 100])).tolist() == [5, UNK]
    vs = ItemVocab.build(pl.Series(["x", "y", "y"]))
    assert vs.is_string and not vi.is_string
    assert vs.encode(["y", "x", "zzz", ""]).tolist() == [3, 4, UNK, UNK]
    assert vs.encode(pl.Series(["x", "w"])).tolist() == [4, UNK]


def test_encode_mixed_representations():
    vi = ItemVocab.build(pl.Series([5, 7, 7, 9]))
    # digit strings against an int vocabulary match the integer; others are UNK
    assert vi.encode(["7", "5", "abc", "12"]).tolist() == [3, 4, UNK, UNK]
    assert vi.encode(np.array([7.5])).tolist() == [UNK]
    # ints against a string vocabulary match their decimal text
    vs = ItemVocab.build(pl.Series(["10", "20", "20"]))
    assert vs.encode([10, 20, 30]).tolist() == [4, 3, UNK]


def test_decode_specials_to_none_and_items_back():
    v = ItemVocab.build(pl.Series([5, 7, 7]))
    out = v.decode([0, 1, 2, 3, 4])
    assert out.tolist() == [None, None, None, 7, 5]
    assert v.decode(np.array([[4, 3]])).tolist() == [[5, 7]]
    with pytest.raises(ValueError):
        v.decode([5])
    with pytest.raises(ValueError):
        v.decode([-1])
    tokens = v.encode([5, 7])
    assert v.decode(tokens).tolist() == [5, 7]


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="unique"):
        ItemVocab([1, 2, 1])


@pytest.mark.parametrize("items", [
    pl.Series([30, 10, 10, 20, 20, 20]),
    pl.Series(["b", "a", "a", "c", "zz", "zz", "zz"]),
])
def test_save_load_round_trip(tmp_path, items):
    v = ItemVocab.build(items)
    path = tmp_path / "vocab.parquet"
    v.save(path)
    back = ItemVocab.load(path)
    assert back == v
    assert back.is_string == v.is_string
    assert back.item_ids.tolist() == v.item_ids.tolist()
    assert back.counts.tolist() == v.counts.tolist()
    probe = items.to_list() + (["nope"] if v.is_string else [999])
    assert back.encode(probe).tolist() == v.encode(probe).tolist()
    # written atomically: nothing else left in the folder
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.parquet"]


def test_load_missing_or_corrupt_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ItemVocab.load(tmp_path / "absent.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 garbage garbage")
    with pytest.raises(CheckpointError, match="corrupt.parquet"):
        ItemVocab.load(corrupt)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), wrong)
    with pytest.raises(CheckpointError, match="item_id"):
        ItemVocab.load(wrong)


# -- hash buckets ------------------------------------------------------------------------------
def test_stable_hash_pinned_values():
    # splitmix64's finaliser (0 and 1 give the reference generator's first outputs from those
    # seeds) and blake2b-64 of UTF-8: any change to the hash moves every bucket, and fails here
    ints = stable_hash(np.array([0, 1, 42, -1, 2**40]))
    assert ints.dtype == np.uint64
    assert [hex(h) for h in ints] == ["0xe220a8397b1dcdaf", "0x910a2dec89025cc1", "0xbdd732262feb6e95",
                                      "0xe4d971771b652c20", "0x1fdd7128f310c389"]
    strings = stable_hash(np.array(["", "item-1", "\u00e9"], dtype=object))
    assert [hex(h) for h in strings] == ["0xb4b2797457a0a6e4", "0x74a8b5ad5a9debe4", "0x2f19f3ef8bbf1acb"]
    assert stable_hash(np.array([7, 7], dtype=np.int32)).tolist() == stable_hash(np.array([7, 7])).tolist()


def test_bucket_tokens_are_pinned_and_come_after_the_items():
    vi = ItemVocab.build(pl.Series([5, 7, 7, 9]), hash_buckets=1000)
    assert len(vi) == N_SPECIAL + 3 + 1000 and vi.n_items == 3 and vi.first_bucket == 6
    assert vi.encode([7, 5, 9, 0, 1, 42, -1, 123456789]).tolist() == [3, 4, 5, 541, 471, 419, 942, 903]
    vs = ItemVocab.build(pl.Series(["x", "y", "y"]), hash_buckets=1000)
    assert vs.encode(["y", "x", "", "item-1", "\u00e9", "zzz"]).tolist() == [3, 4, 761, 433, 968, 434]


BUCKET_PROBE = """
import json, sys
import polars as pl
from recbert.data.vocab import ItemVocab
vi = ItemVocab.build(pl.Series([5, 7, 7, 9]), hash_buckets=97)
vs = ItemVocab.build(pl.Series(["x", "y", "y"]), hash_buckets=97)
print(json.dumps([vi.encode(list(range(-50, 50))).tolist(), vs.encode([f"s{i}" for i in range(100)]).tolist()]))
"""


def test_hashing_is_stable_across_runs():
    """The same ids land in the same buckets in other processes, whatever their hash seed."""
    vi = ItemVocab.build(pl.Series([5, 7, 7, 9]), hash_buckets=97)
    vs = ItemVocab.build(pl.Series(["x", "y", "y"]), hash_buckets=97)
    here = [vi.encode(list(range(-50, 50))).tolist(), vs.encode([f"s{i}" for i in range(100)]).tolist()]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", BUCKET_PROBE], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert json.loads(out) == here
    assert len(set(here[1])) > 50  # 100 ids spread over the buckets, not all in a few


@pytest.mark.parametrize("items,unseen", [
    (pl.Series([30, 40, 10, 30, 40, 30, 10, 50, 20]), [10, 50, 20, 12345, -3]),
    (pl.Series(["c", "d", "a", "c", "d", "c", "a", "e", "b"]), ["a", "e", "b", "never", ""]),
])
def test_buckets_replace_unk_and_leave_item_tokens_unchanged(items, unseen):
    plain = ItemVocab.build(items, max_items=2)
    hashed = ItemVocab.build(items, max_items=2, hash_buckets=4)
    assert hashed.item_ids.tolist() == plain.item_ids.tolist() and hashed.n_items == plain.n_items == 2
    assert len(hashed) == len(plain) + 4 and catalogue_size(len(hashed), 4) == 2
    known = hashed.item_ids.tolist()
    assert hashed.encode(known).tolist() == plain.encode(known).tolist() == [3, 4]
    assert plain.encode(unseen).tolist() == [UNK] * 5
    buckets = hashed.encode(unseen)
    assert ((buckets >= hashed.first_bucket) & (buckets < len(hashed))).all()
    assert hashed.encode(unseen[:1] * 3).tolist() == [buckets[0]] * 3  # the same id, the same bucket
    # buckets are not items: they decode to None, like the specials
    assert hashed.decode(np.r_[3, 4, buckets]).tolist() == known + [None] * 5
    assert hashed.is_item(np.r_[PAD, MASK, UNK, 3, 4, buckets]).tolist() == [False] * 3 + [True] * 2 + [False] * 5
    assert item_index(np.r_[UNK, 4, buckets[:1]], hashed.n_items).tolist() == [-1, 1, -1]


def test_ids_of_another_kind_still_read_as_unk():
    vi = ItemVocab.build(pl.Series([5, 7, 7]), hash_buckets=8)
    tokens = vi.encode(["7", "abc", "12"])
    assert tokens[0] == 3 and tokens[1] == UNK and tokens[2] >= vi.first_bucket
    assert vi.encode(np.array([7.5, np.nan, 12.0])).tolist()[:2] == [UNK, UNK]
    assert vi.encode(np.array([12.0]))[0] == vi.encode([12])[0]
    vs = ItemVocab.build(pl.Series(["x", "y", "y"]), hash_buckets=8)
    assert vs.encode(np.array(["x", None], dtype=object)).tolist() == [4, UNK]


def test_bucket_count_is_saved_with_the_vocabulary(tmp_path):
    v = ItemVocab.build(pl.Series(["b", "a", "a", "c"]), max_items=2, hash_buckets=16)
    path = tmp_path / "vocab.parquet"
    v.save(path)
    meta = json.loads(pq.read_schema(path).metadata[b"recbert.vocab"])
    assert meta["hash_buckets"] == 16 and meta["bucket_hash"]
    back = ItemVocab.load(path)
    assert back == v and back.hash_buckets == 16 and len(back) == len(v)
    probe = ["a", "b", "c", "unseen-1", "unseen-2"]
    assert back.encode(probe).tolist() == v.encode(probe).tolist()
    assert back != ItemVocab(v.item_ids, v.counts)  # same items, no buckets: another vocabulary


def test_a_vocabulary_file_from_before_buckets_loads_without_them(tmp_path):
    old = tmp_path / "old.parquet"
    meta = {"recbert.vocab": json.dumps({"specials": ["[PAD]", "[MASK]", "[UNK]"], "first_item_token": 3})}
    pq.write_table(pa.table({"item_id": [7, 5], "count": [2, 1]}).replace_schema_metadata(meta), old)
    v = ItemVocab.load(old)
    assert v.hash_buckets == 0 and len(v) == 5 and v.encode([7, 99]).tolist() == [3, UNK]
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"item_id": [7, 5]}), bare)
    assert ItemVocab.load(bare).hash_buckets == 0


def test_a_vocabulary_hashed_another_way_is_refused(tmp_path):
    path = tmp_path / "vocab.parquet"
    meta = {"recbert.vocab": json.dumps({"hash_buckets": 8, "bucket_hash": "xxhash"})}
    pq.write_table(pa.table({"item_id": [7, 5]}).replace_schema_metadata(meta), path)
    with pytest.raises(CheckpointError, match="xxhash"):
        ItemVocab.load(path)


def test_negative_hash_buckets_is_one_clear_error():
    from recbert.config import RunConfig
    from recbert.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.hash_buckets must be >= 0"):
        RunConfig.load(None, ["data.hash_buckets=-1"])
    assert RunConfig.load(None, ["data.hash_buckets=64"]).data.hash_buckets == 64


def test_prepare_logs_the_events_that_fell_into_buckets(caplog):
    from recbert.config import RunConfig
    from recbert.data.prepare import prepare_data
    from tests.conftest import cyclic_events

    events = cyclic_events(n_users=40, n_items=20)
    with caplog.at_level(logging.INFO, logger="recbert.data"):
        vocab, splits = prepare_data(RunConfig.load(None, ["data.max_items=10", "data.hash_buckets=5"]), events)
    assert vocab.n_items == 10 and len(vocab) == N_SPECIAL + 10 + 5
    hashed = int((splits.train.items >= vocab.first_bucket).sum())
    assert hashed and not (splits.train.items == UNK).any()
    assert "hash buckets (data.hash_buckets)" in caplog.text and "10 items + 5 hash buckets" in caplog.text

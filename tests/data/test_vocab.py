"""ItemVocab: specials, frequency order, UNK handling, decode, persistence."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbert.data.vocab import MASK, N_SPECIAL, PAD, UNK, ItemVocab
from recbert.errors import CheckpointError


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

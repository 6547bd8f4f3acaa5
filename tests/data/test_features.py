"""load_item_features: per-token value tables for scalar and list columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recbert.data.features import MAX_VALUES_PER_ITEM, load_item_features
from recbert.data.vocab import N_SPECIAL, ItemVocab
from recbert.errors import DataError


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "items.parquet"
    pl.DataFrame({
        "item_id": [10, 20, 30, 40, 99],  # 99 is not in the vocabulary
        "brand": ["acme", "zeta", "acme", None, "other"],
        "cats": [["a", "b"], [], ["b", "c", "a"], ["c"], ["z"]],
        "extra": [1, 2, 3, 4, 5],
    }).write_parquet(path)
    return path


@pytest.fixture
def vocab():
    # token order: 30 -> 3, 10 -> 4, 50 -> 5, 20 -> 6, 40 -> 7 (50 has no feature row)
    return ItemVocab([30, 10, 50, 20, 40])


def test_scalar_and_list_columns_align_with_tokens(items_file, vocab):
    brand, cats = load_item_features(items_file, "item_id", ["brand", "cats"], vocab)
    assert brand.name == "brand" and cats.name == "cats"
    assert brand.table.shape == (len(vocab), 1)
    assert cats.table.shape == (len(vocab), 3)  # widest in-vocabulary list
    assert brand.table.dtype == np.int64

    # values of items outside the vocabulary ('other', 'z') are not counted
    assert brand.cardinality == 2  # acme, zeta
    assert cats.cardinality == 3  # a, b, c

    def values(ft, item):
        return ft.table[vocab.encode([item])[0]].tolist()

    # the same value gets the same code everywhere, different values different codes
    acme = values(brand, 10)[0]
    assert acme >= 1 and values(brand, 30) == [acme]
    zeta = values(brand, 20)[0]
    assert zeta >= 1 and zeta != acme
    assert values(brand, 40) == [0]  # null -> none
    assert values(brand, 50) == [0]  # no feature row -> none

    a, b = values(cats, 10)[:2]
    assert values(cats, 10) == [a, b, 0]
    c = values(cats, 40)[0]
    assert len({a, b, c}) == 3 and min(a, b, c) >= 1 and max(a, b, c) == 3
    assert values(cats, 30) == [b, c, a]  # list order kept
    assert values(cats, 40) == [c, 0, 0]
    assert values(cats, 20) == [0, 0, 0]  # empty list
    # specials have no features
    assert (brand.table[:N_SPECIAL] == 0).all() and (cats.table[:N_SPECIAL] == 0).all()


def test_integer_values_and_string_vocab(tmp_path):
    path = tmp_path / "f.parquet"
    pl.DataFrame({"sku": ["x", "y", "z"], "size": [3, 3, 7]}).write_parquet(path)
    vocab = ItemVocab(np.array(["y", "x"], dtype=object))
    (size,) = load_item_features(path, "sku", ["size"], vocab)
    assert size.cardinality == 1  # only value 3 belongs to vocabulary items
    assert size.table[:, 0].tolist() == [0, 0, 0, 1, 1]


def test_values_per_item_are_capped(tmp_path):
    path = tmp_path / "f.parquet"
    pl.DataFrame({"item_id": [1], "tags": [list(range(MAX_VALUES_PER_ITEM + 5))]}).write_parquet(path)
    (tags,) = load_item_features(path, "item_id", ["tags"], ItemVocab([1]))
    assert tags.table.shape == (4, MAX_VALUES_PER_ITEM)
    assert tags.table[3].tolist() == list(range(1, MAX_VALUES_PER_ITEM + 1))


def test_unknown_column_error(items_file, vocab):
    with pytest.raises(DataError) as exc:
        load_item_features(items_file, "item_id", ["brand", "colour"], vocab)
    msg = str(exc.value)
    assert "'colour'" in msg and str(items_file) in msg and "'brand'" in msg.split("found")[1]
    with pytest.raises(DataError, match="'sku'"):
        load_item_features(items_file, "sku", ["brand"], vocab)


def test_missing_and_unreadable_files(tmp_path, vocab):
    with pytest.raises(DataError, match="does not exist"):
        load_item_features(tmp_path / "none.parquet", "item_id", ["brand"], vocab)
    bad = tmp_path / "bad.parquet"
    bad.write_text("nope")
    with pytest.raises(DataError, match="not readable parquet"):
        load_item_features(bad, "item_id", ["brand"], vocab)


def test_struct_column_rejected(tmp_path, vocab):
    path = tmp_path / "s.parquet"
    pl.DataFrame({"item_id": [10], "meta": [{"a": 1}]}).write_parquet(path)
    with pytest.raises(DataError, match="'meta'.*scalars or lists"):
        load_item_features(path, "item_id", ["meta"], vocab)


def test_items_without_a_token_give_no_features_to_their_buckets(items_file):
    vocab = ItemVocab([30, 10], hash_buckets=3)  # 20, 40 and 99 have rows in the file but no token
    (brand,) = load_item_features(items_file, "item_id", ["brand"], vocab)
    assert brand.table.shape == (len(vocab), 1) == (N_SPECIAL + 2 + 3, 1)
    assert brand.cardinality == 1  # acme only: zeta and other belong to items without a token
    assert (brand.table[vocab.first_bucket:] == 0).all() and (brand.table[N_SPECIAL:vocab.first_bucket] > 0).all()

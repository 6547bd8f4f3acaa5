"""warm_start: a saved model as a run's starting point, checked against the run's settings."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
import torch

from recbert.config import ConfigError, ModelConfig
from recbert.data.features import load_item_features
from recbert.data.vocab import ItemVocab
from recbert.model.recommender import SequenceRecommender
from recbert.model.warm_start import warm_start

RUN = ModelConfig(hidden=16, layers=2, heads=2, intermediate=32, max_len=10, norm="post", reuse_block="gru")


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": list(range(20)), "brand": [f"b{i % 3}" for i in range(20)],
                  "cats": [[f"c{i % 4}", f"c{i % 5}"] for i in range(20)]}).write_parquet(path)
    return path


def saved_model(directory, items_file=None, columns=("brand", "cats")) -> SequenceRecommender:
    vocab = ItemVocab(list(range(20)))
    tables = load_item_features(items_file, "item_id", list(columns), vocab) if items_file else []
    config = dataclasses.replace(RUN, n_tokens=len(vocab), attention="causal",
                                 feature_cardinalities={t.name: t.cardinality for t in tables},
                                 feature_widths={t.name: t.table.shape[1] for t in tables})
    torch.manual_seed(7)
    model = SequenceRecommender(config)
    for t in tables:
        model.embeddings.set_feature_table(t.name, torch.from_numpy(t.table))
    model.vocab = vocab
    model.save_pretrained(directory)
    return model


def test_weights_vocabulary_and_tables_carry_over_with_the_runs_dropout(tmp_path, items_file):
    saved = saved_model(tmp_path / "m", items_file)
    run = dataclasses.replace(RUN, dropout=0.45, attention_dropout=0.3)
    model = warm_start(tmp_path / "m", run, str(items_file), "item_id", ["brand", "cats"])
    assert model.vocab == saved.vocab and model.training
    assert model.config.dropout == 0.45 and model.config.attention_dropout == 0.3
    assert model.config.feature_cardinalities == saved.config.feature_cardinalities
    mine, theirs = model.state_dict(), saved.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # and, under the saved model's attention (each stage sets its own), it computes what the
    # saved model computes (dropout off)
    assert not model.causal
    model.set_attention(True)
    model.eval(), saved.eval()
    ids = torch.randint(3, len(saved.vocab), (4, 10))
    assert torch.allclose(model(ids).sequence_output, saved(ids).sequence_output, atol=1e-6)


def test_another_network_is_refused_naming_each_setting(tmp_path):
    saved_model(tmp_path / "m")
    with pytest.raises(ConfigError) as err:
        warm_start(tmp_path / "m", dataclasses.replace(RUN, hidden=32, norm="pre"))
    message = str(err.value)
    assert "model.hidden = 16 (this run: 32)" in message and "model.norm = 'post' (this run: 'pre')" in message
    assert str(tmp_path / "m") in message
    warm_start(tmp_path / "m", dataclasses.replace(RUN, attention="bidirectional"))  # a stage sets it


def test_the_item_features_must_be_the_saved_ones(tmp_path, items_file):
    saved_model(tmp_path / "m", items_file)
    with pytest.raises(ConfigError, match=r"reads item features \['brand', 'cats'\]; name them"):
        warm_start(tmp_path / "m", RUN)
    with pytest.raises(ConfigError, match=r"this run names \['brand'\]"):
        warm_start(tmp_path / "m", RUN, str(items_file), "item_id", ["brand"])
    other = tmp_path / "other.parquet"
    pl.read_parquet(items_file).with_columns(pl.format("b{}", pl.col("item_id") % 2).alias("brand")).write_parquet(other)
    with pytest.raises(ConfigError, match=r"item feature 'brand' in .*other.parquet differs"):
        warm_start(tmp_path / "m", RUN, str(other), "item_id", ["brand", "cats"])


def test_features_named_for_a_model_without_them_are_refused(tmp_path, items_file):
    saved_model(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"trained without item features; this run names \['brand'\]"):
        warm_start(tmp_path / "m", RUN, str(items_file), "item_id", ["brand"])


def test_a_missing_or_corrupt_model_is_named(tmp_path):
    from recbert.errors import CheckpointError

    with pytest.raises(CheckpointError, match="has no config.json"):
        warm_start(tmp_path / "nothing", RUN)
    saved_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        warm_start(tmp_path / "m", RUN)

"""Shared fixtures: a small generated event log with a learnable pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def cyclic_events(n_users: int = 300, n_items: int = 60, min_len: int = 8, max_len: int = 20,
                  seed: int = 0, string_ids: bool = False) -> pl.DataFrame:
    """Each user walks the item ring i -> i+1 (mod n_items) from a random start:
    the next item is fully determined by the last one, so a working model
    reaches a hit rate far above the 10/n_items of random guessing."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(n_items))
        seq = (start + np.arange(length)) % n_items
        users += [u] * length
        items += seq.tolist()
        times += (1_000_000 + u * 1000 + np.arange(length) * 10).tolist()
    df = pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times})
    if string_ids:
        df = df.with_columns(pl.format("u{}", "user_id").alias("user_id"), pl.format("item-{}", "item_id").alias("item_id"))
    return df


@pytest.fixture
def cyclic_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "events.parquet"
    cyclic_events().write_parquet(path)
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch) -> str:
    """A private SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


ML100K = REPO / "data" / "ml-100k"


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> Path:
    """A tiny (untrained) model directory with the shipped ML-100K vocabulary."""
    import torch

    from recbert.config import ModelConfig
    from recbert.data.vocab import ItemVocab
    from recbert.model.recommender import SequenceRecommender

    vocab = ItemVocab.build(pl.read_parquet(ML100K / "events.parquet")["item_id"])
    cfg = ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_len=20, n_tokens=len(vocab))
    torch.manual_seed(3)
    model = SequenceRecommender(cfg)
    return model.save_pretrained(tmp_path_factory.mktemp("pre") / "model", vocab)

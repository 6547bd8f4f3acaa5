"""Fine-tuning experiments end to end on the shipped MovieLens-100K, with a tiny model."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from recbert.heads.backbones import Backbones
from recbert.jobs.finetune import FinetuneRunConfig, run_classification, run_ctr
from recbert.cli import main
from recbert.config import ModelConfig
from recbert.errors import ConfigError, DataError
from recbert.model.recommender import SequenceRecommender
from tests.conftest import REPO

ML = REPO / "data" / "ml-100k"
TINY = ["model.hidden=16", "model.layers=1", "model.heads=2", "model.intermediate=32", "model.max_len=20"]
DATA = [f"experiment.events={ML / 'events.parquet'}", f"experiment.users={ML / 'users.parquet'}",
        f"experiment.items={ML / 'items.parquet'}"]


def test_backbones_pretrained_copy_and_scratch(pretrained_dir):
    b = Backbones(pretrained_dir, ModelConfig(), "unused")
    pre, scratch = b.make("pretrained", 0), b.make("scratch", 0)
    base = SequenceRecommender.from_pretrained(pretrained_dir).state_dict()
    assert all(torch.equal(base[k], v) for k, v in pre.state_dict().items())
    assert scratch.config == pre.config and scratch.vocab == pre.vocab
    assert not torch.equal(scratch.embeddings.item.weight, pre.embeddings.item.weight)
    assert torch.equal(b.make("scratch", 1).embeddings.item.weight, b.make("scratch", 1).embeddings.item.weight)
    with pytest.raises(ConfigError, match="model directory"):
        Backbones(None, ModelConfig(hidden=16, layers=1, intermediate=32), str(ML / "events.parquet")).make(
            "pretrained", 0)


def test_run_classification_kfold(tmp_path):
    # MLflow parent / child runs of run_classification are checked in tests/test_ablate.py
    cfg = FinetuneRunConfig.load(None, TINY + DATA + ["experiment.folds=2", "experiment.epochs=1",
                                                      "tracking.enabled=false"])
    res = run_classification(None, "gender", cfg, variants=("scratch",))
    assert set(res.runs) == {"tfidf_logreg", "scratch"}
    assert all(len(v) == 2 for v in res.runs.values())
    assert all(len(c) == 2 for c in res.curves["scratch"])  # before + after epoch 1
    for m in res.runs["scratch"] + res.runs["tfidf_logreg"]:
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["auc"] <= 1.0
    # TF-IDF bag-of-items carries a real gender signal
    assert np.mean([m["auc"] for m in res.runs["tfidf_logreg"]]) > 0.55
    assert "| scratch | 2 |" in res.info["table"] and "auc after 1 ep" in res.info["table"]


def test_run_ctr_pretrained_and_scratch(pretrained_dir):
    cfg = FinetuneRunConfig.load(None, DATA + ["tracking.enabled=false", "experiment.epochs=1",
                                               "experiment.max_train_samples=600", "experiment.max_val_samples=300",
                                               "experiment.max_test_samples=600", "experiment.seeds=[0,1]"])
    res = run_ctr(pretrained_dir, cfg, variants=("pretrained", "scratch"))
    assert set(res.runs) == {"features_logreg", "pretrained", "scratch"} and res.run_id is None
    assert all(len(v) == 2 for v in res.runs.values())
    assert np.mean([m["auc"] for m in res.runs["features_logreg"]]) > 0.6
    for v in ("pretrained", "scratch"):
        for m in res.runs[v]:
            assert math.isfinite(m["log_loss"]) and 0 <= m["auc"] <= 1
    assert res.info["test"] > 10_000


def test_ctr_with_the_dense_task_features_as_context(pretrained_dir):
    """ctr.n_context=3: the head also reads the baseline's three features (standardised);
    with them it learns at least what the features alone give."""
    sets = DATA + ["tracking.enabled=false", "experiment.epochs=3", "experiment.max_train_samples=3000",
                   "experiment.max_val_samples=500", "experiment.max_test_samples=1500", "ctr.n_context=3",
                   "ctr.use_product=false", "finetune.head_lr=0.01"]
    res = run_ctr(pretrained_dir, FinetuneRunConfig.load(None, sets), variants=("pretrained",))
    with_context = res.runs["pretrained"][0]["auc"]
    assert with_context > res.runs["features_logreg"][0]["auc"] - 0.03 and with_context > 0.6
    for bad, message in ((["ctr.n_context=2"], "must be 0 .* or 3"), ([], "cannot be saved")):
        with pytest.raises(ConfigError, match=message):
            run_ctr(pretrained_dir, FinetuneRunConfig.load(None, sets + bad), save_dir=None if bad else "x")


def test_window_longer_than_the_model_is_rejected(pretrained_dir):
    cfg = FinetuneRunConfig.load(None, DATA + ["tracking.enabled=false", "experiment.max_len=50"])
    with pytest.raises(ConfigError, match="max_len"):
        run_classification(pretrained_dir, "age", cfg)


def test_cli_finetune(pretrained_dir, capsys):
    args = ["finetune", "--task", "occupation", "--model-dir", str(pretrained_dir), "--folds", "2", "--epochs", "1",
            "--no-mlflow"] + [a for s in DATA for a in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| pretrained | 2 |" in out and "| tfidf_logreg | 2 |" in out and "mlflow: off" in out
    assert main(["finetune", "--task", "gender", "--no-mlflow"]) == 2
    assert "--scratch" in capsys.readouterr().err
    assert main(["finetune", "--task", "gender", "--scratch", "--set", "experiment.folds=1"]) == 2
    assert "experiment.folds" in capsys.readouterr().err


def test_runs_are_reproducible(pretrained_dir):
    cfg = FinetuneRunConfig.load(None, DATA + ["tracking.enabled=false", "experiment.folds=2", "experiment.epochs=1",
                                               "experiment.baselines=false"])
    a = run_classification(pretrained_dir, "gender", cfg)
    b = run_classification(pretrained_dir, "gender", cfg)
    assert a.runs == b.runs and list(a.runs) == ["pretrained"]


def test_classification_on_a_label_column_of_your_own(tmp_path):
    users = pl.read_parquet(ML / "users.parquet")
    own = users.select("user_id", pl.when(pl.col("age") >= 35).then(pl.lit("older")).otherwise(pl.lit("younger"))
                       .alias("segment"))
    own = own.with_columns(pl.when(pl.col("user_id") % 50 == 0).then(None).otherwise(pl.col("segment"))
                           .alias("segment"))  # a few users without a label
    own.write_parquet(tmp_path / "own.parquet")
    sets = TINY + DATA + ["experiment.folds=2", "experiment.epochs=1", "tracking.enabled=false",
                          f"experiment.users={tmp_path / 'own.parquet'}", "experiment.label_column=segment"]
    res = run_classification(None, "label", FinetuneRunConfig.load(None, sets), variants=("scratch",))
    assert res.info["classes"] == ["older", "younger"] and res.info["users"] == 943 - 18
    assert np.mean([m["auc"] for m in res.runs["tfidf_logreg"]]) > 0.6  # age is visible in what people rate

    def fails(extra, match):
        with pytest.raises(DataError, match=match):
            run_classification(None, "label", FinetuneRunConfig.load(None, sets + extra), variants=("scratch",))

    fails(["experiment.label_column=churn"], r"needs columns user_id and 'churn'")
    own.with_columns(pl.lit("x").alias("segment")).write_parquet(tmp_path / "one.parquet")
    fails([f"experiment.users={tmp_path / 'one.parquet'}"], "single class")
    own.with_columns(pl.col("user_id").cast(pl.String)).write_parquet(tmp_path / "str.parquet")
    fails([f"experiment.users={tmp_path / 'str.parquet'}"], "user_id is Int64 in the events but String")
    with pytest.raises(DataError, match="experiment.label_column"):
        run_classification(None, "label", FinetuneRunConfig.load(None, TINY + DATA + ["tracking.enabled=false"]),
                           variants=("scratch",))

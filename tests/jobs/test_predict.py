"""recbert finetune --save-model, then recbert predict with the saved head."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recbert.jobs.finetune import FinetuneRunConfig, run_ctr
from recbert.jobs.predict import run_predict
from recbert.cli import main
from recbert.data.batches import left_pad
from recbert.errors import DataError
from recbert.heads import CTRModel, SequenceClassifier, load_head
from tests.jobs.test_finetune import DATA, ML, TINY

EVENTS = str(ML / "events.parquet")


def history(user_id):
    """The user's item ids in time order."""
    ev = pl.read_parquet(EVENTS).filter(pl.col("user_id") == user_id).sort("timestamp", maintain_order=True)
    return ev["item_id"].to_numpy()


@pytest.fixture(scope="module")
def gender_head(tmp_path_factory):
    out = tmp_path_factory.mktemp("gender") / "head"
    args = ["finetune", "--task", "gender", "--scratch", "--folds", "2", "--epochs", "1", "--no-mlflow",
            "--save-model", str(out), "--set", "experiment.baselines=false"] + \
        [a for s in TINY + DATA for a in ("--set", s)]
    assert main(args) == 0
    return out


def test_finetune_saves_a_classifier_that_predict_reuses(gender_head, tmp_path):
    head = load_head(gender_head)
    assert isinstance(head, SequenceClassifier)
    assert head.metadata["task"] == "gender" and head.metadata["classes"] == ["F", "M"]
    assert set(head.metadata["cv_metrics"]) >= {"auc", "accuracy"}
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": [1, 2, 999_999, 3]}).write_parquet(users)
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--model", str(gender_head), "--events", EVENTS, "--users", str(users),
                 "--out", str(out)]) == 0
    pred = pl.read_parquet(out)
    assert pred["user_id"].to_list() == [1, 2, 3]  # the unknown user is reported and skipped
    assert set(pred["prediction"].to_list()) <= {"F", "M"}
    proba = np.stack(pred["proba"].to_list())
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pred["probability"].to_numpy(), proba.max(1), atol=1e-6)
    # the same probability as the head itself on user 2's newest `window` events
    window = head.metadata["window"]
    tokens = head.vocab.encode(history(2))
    row = torch.from_numpy(left_pad(tokens, np.array([0]), np.array([len(tokens)]), window))
    assert float(head.predict_proba(row)[0]) == pytest.approx(float(proba[1, 1]), abs=1e-5)


def test_ctr_head_saved_and_scored_on_pairs(pretrained_dir, tmp_path):
    cfg = FinetuneRunConfig.load(None, DATA + ["tracking.enabled=false", "experiment.epochs=1",
                                               "experiment.max_train_samples=400", "experiment.max_val_samples=200",
                                               "experiment.max_test_samples=400", "experiment.baselines=false"])
    run_ctr(pretrained_dir, cfg, variants=("pretrained",), save_dir=tmp_path / "ctr")
    head = CTRModel.from_pretrained(tmp_path / "ctr")
    assert head.metadata["task"] == "ctr" and "auc" in head.metadata["test_metrics"]
    pairs = tmp_path / "pairs.parquet"
    pl.DataFrame({"user_id": [5, 5, 999_999, 7], "item_id": [50, 123_456, 50, 1]}).write_parquet(pairs)
    out = tmp_path / "clicks.parquet"
    n = run_predict(tmp_path / "ctr", EVENTS, out, pairs=pairs)
    got = pl.read_parquet(out)
    assert n == 3 and got["user_id"].to_list() == [5, 5, 7] and got["item_id"].to_list() == [50, 123_456, 1]
    p = got["click_proba"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    window = head.metadata["window"]
    tokens = head.vocab.encode(history(7))
    row = torch.from_numpy(left_pad(tokens, np.array([0]), np.array([len(tokens)]), window))
    direct = head.predict_proba(row, torch.from_numpy(head.vocab.encode(np.array([1]))))
    assert float(direct[0]) == pytest.approx(float(p[2]), abs=1e-5)

    with pytest.raises(DataError, match="CTR model: give --pairs"):
        run_predict(tmp_path / "ctr", EVENTS, tmp_path / "x.parquet")
    pl.DataFrame({"user_id": [5]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet lacks column\(s\) \['item_id'\]"):
        run_predict(tmp_path / "ctr", EVENTS, tmp_path / "x.parquet", pairs=tmp_path / "bad.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_predict_errors(gender_head, tmp_path, capsys):
    pl.DataFrame({"user_id": [1], "item_id": [1]}).write_parquet(tmp_path / "pairs.parquet")
    assert main(["predict", "--model", str(gender_head), "--events", EVENTS, "--pairs",
                 str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "holds a classifier" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), "--events", EVENTS,
                 "--out", str(tmp_path / "o.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    pl.DataFrame({"user_id": [None, 1]}, schema={"user_id": pl.Int64}).write_parquet(tmp_path / "u.parquet")
    assert main(["predict", "--model", str(gender_head), "--events", EVENTS, "--users", str(tmp_path / "u.parquet"),
                 "--out", str(tmp_path / "o.parquet")]) == 2
    assert "'user_id' has 1 null" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()

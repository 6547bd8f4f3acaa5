"""A saved model directory: run config, model-dir resolution, encoder loading and the
compatibility checks a head makes against its data."""

from __future__ import annotations

import numpy as np
import pytest

from recbert.config import RunConfig
from recbert.data.vocab import ItemVocab
from recbert.errors import CheckpointError
from recbert.heads.classification import HeadConfig, SequenceClassifier
from recbert.model.checkpoint import (RUN_CONFIG_FILE, check_compatible, load_encoder, load_run_config,
                                      resolve_model_dir)
from tests.heads.tiny import tiny_backbone

N_ITEMS = 20


def backbone():
    return tiny_backbone(0, N_ITEMS, layers=3)


def test_load_encoder_and_compatibility_errors(tmp_path):
    ref = backbone()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_encoder(tmp_path / "empty")
    ref.save_pretrained(tmp_path / "m")
    enc = load_encoder(tmp_path / "m")
    check_compatible(enc, ref.vocab, 16)
    check_compatible(enc, len(ref.vocab))
    with pytest.raises(CheckpointError, match=r"n_tokens=23.*expects 30"):
        check_compatible(enc, 30)
    with pytest.raises(CheckpointError, match="different item ids"):
        check_compatible(enc, ItemVocab(np.arange(500, 500 + N_ITEMS)))
    with pytest.raises(CheckpointError, match="hidden=16 but the head expects hidden=64"):
        check_compatible(SequenceClassifier(enc, HeadConfig()), None, 64)


def test_run_config_round_trips_and_a_corrupt_one_is_named(tmp_path):
    assert load_run_config(tmp_path) is None
    cfg = RunConfig.load(None, ["model.hidden=32", "train.epochs=3"])
    cfg.save(tmp_path / RUN_CONFIG_FILE)
    assert load_run_config(tmp_path) == cfg
    (tmp_path / RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{RUN_CONFIG_FILE} is not valid JSON"):
        load_run_config(tmp_path)


def test_resolve_model_dir_needs_exactly_one_source(tmp_path):
    assert resolve_model_dir(tmp_path) == tmp_path
    for kwargs in ({}, {"model_dir": tmp_path, "run_id": "abc"}):
        with pytest.raises(CheckpointError, match="exactly one"):
            resolve_model_dir(**kwargs)

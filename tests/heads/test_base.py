"""Head models hold the recommender as ``backbone``; fine-tuned heads save and load whole."""

import json

import numpy as np
import pytest
import torch

from recbert.data.vocab import N_SPECIAL
from recbert.errors import CheckpointError, DataError
from recbert.heads import CTRConfig, CTRModel, HeadConfig, SequenceClassifier, load_head
from recbert.heads.base import HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE, rows_from_tokens
from recbert.model.recommender import SequenceRecommender
from tests.heads.tiny import tiny_backbone

N_ITEMS = 30


def backbone(seed=0):
    return tiny_backbone(seed, N_ITEMS, string_ids=True, max_len=10, dropout=0.1, fusion="learned")


def rows(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rows_from_tokens([rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=int(rng.integers(1, 10)))
                             for _ in range(n)], 10)


def nudge(model):
    """A few optimiser steps so saved weights differ from any fresh initialisation."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = rows()
    for _ in range(3):
        opt.zero_grad()
        out = model(x) if isinstance(model, SequenceClassifier) else model(x, x[:, -1].clamp(min=N_SPECIAL))
        out.float().pow(2).mean().backward()
        opt.step()
    return model.eval()


def test_encode_is_the_recommenders_forward():
    bb = backbone().eval()
    clf = SequenceClassifier(bb, HeadConfig(n_classes=3)).eval()
    x = rows()
    assert clf.backbone is bb and clf.encoder is bb.encoder and clf.embeddings is bb.embeddings
    torch.testing.assert_close(clf.encode(x).sequence_output, bb(x, causal=False).sequence_output)
    assert all(n.startswith(("backbone.", "pooling.", "tower.")) for n, _ in clf.named_parameters())
    assert SequenceClassifier(bb, HeadConfig(), keep_scorer=False).scorer is None


def test_classifier_save_and_load_round_trip(tmp_path):
    clf = nudge(SequenceClassifier(backbone(), HeadConfig(n_classes=3, pooling="attention", hidden_dims=[8, 8])))
    clf.metadata = {"task": "occupation", "classes": ["a", "b", "c"]}
    clf.save_pretrained(tmp_path / "clf")
    for loaded in (SequenceClassifier.from_pretrained(tmp_path / "clf"), load_head(tmp_path / "clf")):
        assert isinstance(loaded, SequenceClassifier) and not loaded.training
        assert loaded.head_config == clf.head_config and loaded.metadata == clf.metadata
        assert loaded.vocab == clf.vocab
        torch.testing.assert_close(loaded(rows(seed=1)), clf(rows(seed=1)))
    # the directory is also the fine-tuned recommender's directory
    enc = SequenceRecommender.from_pretrained(tmp_path / "clf")
    for k, v in clf.backbone.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    # with a config: a new head on the fine-tuned encoder
    fresh = SequenceClassifier.from_pretrained(tmp_path / "clf", HeadConfig(n_classes=5))
    assert fresh.training and fresh.head_config.n_classes == 5


def test_ctr_model_save_and_load_round_trip(tmp_path):
    model = nudge(CTRModel(backbone(), CTRConfig(pooling="mean", hidden_dims=[12])))
    model.save_pretrained(tmp_path / "ctr")
    loaded = CTRModel.from_pretrained(tmp_path / "ctr")
    x, cand = rows(seed=2), torch.full((12,), N_SPECIAL + 3)
    torch.testing.assert_close(loaded.predict_proba(x, cand), model.predict_proba(x, cand))
    assert isinstance(load_head(tmp_path / "ctr"), CTRModel)
    with pytest.raises(CheckpointError, match=r"holds a 'ctr' head \(CTRModel\), not a SequenceClassifier"):
        SequenceClassifier.from_pretrained(tmp_path / "ctr")


def test_saved_head_errors_name_the_problem(tmp_path):
    clf = SequenceClassifier(backbone(), HeadConfig(n_classes=3, hidden_dims=[8]))
    d = tmp_path / "clf"
    clf.save_pretrained(d)
    backbone().save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="holds no fine-tuned head"):
        load_head(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_head(tmp_path / "missing")

    card = json.loads((d / HEAD_CONFIG_FILE).read_text())
    card["head"]["hidden_dims"] = [12]
    (d / HEAD_CONFIG_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"head\.json does not match its checksum"):
        load_head(d)
    (d / "checksums.json").unlink()  # edited by hand: the consistency checks answer
    with pytest.raises(CheckpointError, match=r"head\.safetensors: tower\..* has shape"):
        load_head(d)
    card["head"]["pooling"] = "median"
    (d / HEAD_CONFIG_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"head\.json: head\.pooling must be one of"):
        load_head(d)
    card["kind"] = "ranker"
    (d / HEAD_CONFIG_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="unknown head kind 'ranker'"):
        load_head(d)
    (d / HEAD_CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="head.json is not valid JSON"):
        load_head(d)

    clf.save_pretrained(d)
    (d / HEAD_WEIGHTS_FILE).write_bytes(b"garbage")
    (d / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="head.safetensors is not a readable safetensors file"):
        load_head(d)
    (d / HEAD_WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no head.safetensors"):
        load_head(d)


def test_unserialisable_metadata_is_refused_before_anything_is_written(tmp_path):
    clf = SequenceClassifier(backbone(), HeadConfig())
    clf.metadata = {"auc": float("nan")}
    with pytest.raises(DataError, match="plain JSON values"):
        clf.save_pretrained(tmp_path / "clf")
    assert not (tmp_path / "clf").exists()


def test_append_mask_uses_the_cloze_user_vector_slot():
    bb = backbone().eval()
    rng = np.random.default_rng(0)
    x = rows_from_tokens([rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=n) for n in (10, 3, 7) * 4], 10)
    assert x.shape == (12, 10)  # width = max_len: the oldest column makes room for [MASK]
    clf = SequenceClassifier(bb, HeadConfig(pooling="cls", cls_position=-1, append_mask=True)).eval()
    masked = clf.with_mask(x)
    assert masked.shape == x.shape and (masked[:, -1] == 1).all() and torch.equal(masked[:, :-1], x[:, 1:])
    assert clf.with_mask(x[:, 4:]).shape == (12, 7)  # narrower rows just grow by one
    # the pooled vector is the recommender's state at [MASK]: what its user vector is read from
    want = bb(bb.inference_rows([r[r > 0].numpy() for r in x]), causal=False).sequence_output[:, -1]
    torch.testing.assert_close(clf.pooled(x), want)
    ctr = CTRModel(bb, CTRConfig(pooling="cls", append_mask=True)).eval()
    u = ctr.features(x, torch.full((12,), N_SPECIAL))[:, :16]
    torch.testing.assert_close(u, want)

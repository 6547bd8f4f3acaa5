import json

import numpy as np
import pytest
import torch

from recbert.config import ModelConfig
from recbert.data.vocab import MASK, ItemVocab
from recbert.errors import CheckpointError, ConfigError, DivergenceError, OutputError, RecbertError
from recbert.model.recommender import SequenceRecommender


def make_model(attention="bidirectional", string_ids=False, hash_buckets=0, **kw):
    ids = [f"i{i}" for i in range(10)] if string_ids else list(range(100, 110))
    vocab = ItemVocab(np.array(ids, dtype=object if string_ids else np.int64), hash_buckets=hash_buckets)
    cfg = ModelConfig(hidden=16, layers=2, heads=2, intermediate=32, max_len=6, dropout=0.1,
                      attention_dropout=0.1, n_tokens=len(vocab), hash_buckets=hash_buckets, attention=attention, **kw)
    torch.manual_seed(0)
    model = SequenceRecommender(cfg)
    model.vocab = vocab
    return model.eval()


def test_scorer_is_tied_to_the_item_embeddings():
    model = make_model()
    assert model.scorer.item_table.weight is model.embeddings.item.weight
    assert model.item_vectors().shape == (10, 16)


@pytest.mark.parametrize("filter_mix", [0.0, 0.7])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_save_and_load_give_identical_outputs(tmp_path, attention, filter_mix):
    model = make_model(attention, residual_attention=True, filter_mix=filter_mix)
    ids = torch.tensor([[0, 3, 4, 5, 6, 1]])
    before = model.scorer(model(ids).last_hidden_state[:, -1])
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["checksums.json", "config.json",
                                                                   "model.safetensors", "vocab.parquet"]
    loaded = SequenceRecommender.from_pretrained(tmp_path / "m")
    after = loaded.scorer(loaded(ids).last_hidden_state[:, -1])
    assert torch.allclose(before, after)
    assert loaded.vocab == model.vocab and loaded.config == model.config
    assert loaded.scorer.item_table.weight is loaded.embeddings.item.weight


def test_model_needs_a_vocabulary_size():
    with pytest.raises(ConfigError, match="n_tokens"):
        SequenceRecommender(ModelConfig())


def test_inference_rows_append_mask_only_for_cloze_models():
    bi, ca = make_model("bidirectional"), make_model("causal")
    hist = [np.array([3, 4, 5, 6, 7, 8, 9])]
    rb, rc = bi.inference_rows(hist), ca.inference_rows(hist)
    assert rb.tolist() == [[5, 6, 7, 8, 9, MASK]]  # newest max_len - 1 items + [MASK]
    assert rc.tolist() == [[4, 5, 6, 7, 8, 9]]  # newest max_len items


def test_recommend_maps_ids_excludes_seen_and_tolerates_unknown_ids():
    model = make_model(string_ids=True)
    ids, scores = model.recommend([["i1", "i2", "never-seen"], []], k=10, exclude_seen=True)
    assert ids.shape == (2, 10)
    finite = np.isfinite(scores[0])
    assert finite.sum() == 8 and np.all(np.diff(scores[0][finite]) <= 0)
    assert not {"i1", "i2"} & set(ids[0][finite])
    assert list(ids[0][~finite]) == [None, None]
    assert set(ids[1]) == {f"i{i}" for i in range(10)}
    top_all, _ = model.recommend([["i1"]], k=3, exclude_seen=False)
    assert top_all.shape == (1, 3)


def test_recommend_breaks_ties_in_vocabulary_order_and_refuses_nan_scores():
    model = make_model()
    with torch.no_grad():  # every item scores 0: a collapsed model
        model.embeddings.item.weight.zero_()
        model.scorer.bias.zero_()
    ids, scores = model.recommend([[103], [103]], k=4)
    assert ids.tolist() == [[100, 101, 102, 104]] * 2 and (scores == 0).all()
    with torch.no_grad():
        model.scorer.bias[2] = float("nan")
    with pytest.raises(DivergenceError, match="model scores are not finite"):
        model.recommend([[103]], k=4)


def test_cnn_reuse_block_takes_its_kernel_size_from_the_config():
    model = make_model(reuse_block="cnn", reuse_kernel_size=5)
    assert model.reuse.f.kernel_size == (5,)
    with pytest.raises(ConfigError, match="reuse_kernel_size"):
        make_model(reuse_block="cnn", reuse_kernel_size=0)
    with pytest.raises(ConfigError, match=r"model.fusion must be one of \['last', 'learned'"):
        make_model(fusion="weighted")


def test_recommend_rejects_bad_k():
    model = make_model()
    with pytest.raises(Exception, match="k=11"):
        model.recommend([[100]], k=11)


def test_missing_file_and_corrupt_weights_are_reported(tmp_path):
    model = make_model()
    d = tmp_path / "m"
    model.save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SequenceRecommender.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        SequenceRecommender.from_pretrained(d)


def test_checkpoint_that_does_not_match_its_config_is_reported(tmp_path):
    model = make_model()
    d = tmp_path / "m"
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden"] = 32
    cfg["intermediate"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json does not match its checksum in .*checksums.json"):
        SequenceRecommender.from_pretrained(d)
    (d / "checksums.json").unlink()  # a folder edited by hand, or saved before checksums: the checks below
    with pytest.raises(CheckpointError, match="does not match"):
        SequenceRecommender.from_pretrained(d)
    cfg["hidden"], cfg["intermediate"], cfg["n_tokens"] = 16, 32, 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vocabulary has 13 tokens"):
        SequenceRecommender.from_pretrained(d)
    cfg["n_tokens"], cfg["bogus"] = 13, 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="bogus"):
        SequenceRecommender.from_pretrained(d)


def test_save_is_atomic_and_keeps_the_old_model_on_failure(tmp_path, monkeypatch):
    model = make_model()
    d = tmp_path / "m"
    model.save_pretrained(d)
    before = (d / "model.safetensors").read_bytes()
    import recbert.model.recommender as rec

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(rec, "save_file", boom)
    with pytest.raises(OutputError, match="cannot write .*: disk full; nothing was changed there"):
        model.save_pretrained(d)
    assert (d / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("fusion,reuse", [("learned", "none"), ("mean", "lstm"), ("max", "cnn"), ("sum", "transformer")])
def test_fusion_and_reuse_block_are_wired_and_saved(tmp_path, fusion, reuse):
    model = make_model("bidirectional", fusion=fusion, fusion_layers=2, reuse_block=reuse)
    ids = torch.tensor([[0, 0, 3, 4, 5, MASK]])
    out = model(ids)
    assert len(out.hidden_states) == 3
    assert not torch.allclose(out.sequence_output, out.last_hidden_state)
    model.save_pretrained(tmp_path / "m")
    loaded = SequenceRecommender.from_pretrained(tmp_path / "m")
    assert torch.allclose(loaded(ids).sequence_output, out.sequence_output, atol=1e-6)
    assert loaded.config.fusion == fusion and loaded.config.reuse_block == reuse


def test_default_model_reads_the_last_layer_and_has_no_extra_parameters():
    model = make_model()
    ids = torch.tensor([[3, 4, 5, MASK]])
    out = model(ids)
    assert torch.equal(out.sequence_output, out.last_hidden_state)
    assert not list(model.fusion.parameters()) and not list(model.reuse.parameters())


@pytest.mark.parametrize("reuse", ["lstm", "gru", "cnn", "transformer"])
def test_a_reuse_block_trains_next_item_without_seeing_later_items(reuse):
    from recbert.config import EvalConfig, StageConfig
    from recbert.data.sequences import Sequences, EvalSet, Splits
    from recbert.training.trainer import train_stage

    model = make_model("bidirectional", reuse_block=reuse, fusion="learned")  # e.g. MLM-pretrained
    seqs = Sequences(np.array([1, 2]), np.array([3, 4, 5, 6, 5, 4, 3]), np.array([0, 4, 7]))
    splits = Splits(seqs, EvalSet(seqs, np.array([7, 6])), EvalSet(seqs, np.array([8, 7])))
    train_stage(model, splits, StageConfig(objective="next_item", epochs=1, batch_size=2), EvalConfig())
    assert model.causal
    model.eval()
    ids = torch.tensor([[0, 3, 4, 5, 6, 7]])
    later = torch.tensor([[0, 3, 4, 9, 8, 2]])
    with torch.no_grad():
        out, out_later = model(ids).sequence_output, model(later).sequence_output
        both, both_later = model(ids, causal=False).sequence_output, model(later, causal=False).sequence_output
    torch.testing.assert_close(out_later[:, :3], out[:, :3])
    assert (both_later[:, :3] - both[:, :3]).abs().max() > 1e-4  # bidirectional reads them


def test_fusion_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="fusion_layers"):
        ModelConfig(layers=2, fusion="mean", fusion_layers=4)


def tied_model(**kw):
    """make_model with exact ties: items 100, 102, 104, 106 have a zero vector and bias 1.0,
    so they score exactly 1.0 and tie with each other whatever the matmul."""
    model = make_model(**kw)
    with torch.no_grad():
        model.embeddings.item.weight[3::2] = 0.0
        model.scorer.bias[::2] = 1.0
        model.scorer.bias[8] = 3.0  # 108 first, then the tie
    return model


@pytest.mark.parametrize("chunk", [1, 3, 10, 50])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_in_chunks_equals_recommend_over_the_whole_catalogue(chunk, exclude_seen):
    model = tied_model()
    histories = [[103], [100, 104, 109], [], list(range(100, 109))]
    whole_ids, whole_scores = model.recommend(histories, k=10, exclude_seen=exclude_seen)
    ids, scores = model.recommend(histories, k=10, exclude_seen=exclude_seen, chunk=chunk)
    assert ids.tolist() == whole_ids.tolist()
    np.testing.assert_allclose(scores, whole_scores, rtol=1e-6)  # other chunks, other matmuls: last-bit differences
    ties = [i for i in ids[2] if i in (100, 102, 104, 106)]
    assert ties == [100, 102, 104, 106] and ids[2][0] == 108  # tied scores in vocabulary order
    if exclude_seen:
        assert ids[3].tolist()[1:] == [None] * 9 and ids[3][0] == 109 and np.isneginf(scores[3][1:]).all()


def test_recommend_in_chunks_keeps_k_best_across_chunks_and_refuses_nan_scores():
    model = tied_model()
    ids, scores = model.recommend([[108]], k=3, chunk=2)
    assert ids.tolist() == [[100, 102, 104]] and (scores == 1.0).all()
    with pytest.raises(RecbertError, match="chunk=0 must be >= 1"):
        model.recommend([[108]], k=3, chunk=0)
    with torch.no_grad():
        model.scorer.bias[9] = float("inf")  # in the last chunk
    with pytest.raises(DivergenceError, match="model scores are not finite"):
        model.recommend([[103]], k=4, chunk=3)


# -- hash buckets: input tokens, never catalogue items ------------------------------------------
def test_buckets_have_embeddings_but_are_never_scored_or_recommended():
    from recbert.config import EvalConfig
    from recbert.data.sequences import EvalSet, Sequences
    from recbert.evaluation.ranking import evaluate_ranking
    from recbert.exports.embeddings import item_matrix

    model = make_model(hash_buckets=4)
    vocab = model.vocab
    assert model.embeddings.item.weight.shape[0] == len(vocab) == 3 + 10 + 4
    assert model.item_vectors().shape == (10, 16) and model.scorer.bias.shape == (10,)
    assert item_matrix(model).shape == (10, 17)  # exports (and the Faiss index built on them): items only
    unseen = [5000, 5001, 5002]
    assert (vocab.encode(unseen) >= vocab.first_bucket).all()
    ids, scores = model.recommend([unseen, [103] + unseen], k=10, exclude_seen=True)
    assert set(ids[0]) == set(range(100, 110)) and np.isfinite(scores[0]).all()  # buckets exclude nothing
    assert None not in set(ids[1][:9]) and 103 not in ids[1] and ids[1][9] is None
    with pytest.raises(RecbertError, match="k=11"):
        model.recommend([unseen], k=11)
    # evaluation ranks the 10 items only; a held-out item without a token (UNK, a bucket) is a miss
    history = vocab.encode([101, 102, 5000])
    seqs = Sequences(np.arange(3), np.tile(history, 3), np.array([0, 3, 6, 9]))
    targets = np.array([vocab.encode([104])[0], vocab.encode([6000])[0], 2])
    assert targets[1] >= vocab.first_bucket
    out = evaluate_ranking(model, EvalSet(seqs, targets), EvalConfig(ks=[10], select_metric="hr@10"))
    assert out["all/hr@10"] == pytest.approx(1 / 3) and out["sampled/hr@10"] == pytest.approx(1 / 3)


def test_a_loaded_model_maps_unseen_ids_to_the_same_buckets(tmp_path):
    model = make_model(hash_buckets=4)
    model.save_pretrained(tmp_path / "m")
    loaded = SequenceRecommender.from_pretrained(tmp_path / "m")
    assert loaded.vocab == model.vocab and loaded.config.hash_buckets == 4
    probe = [100, 5000, 123456, -7]
    assert loaded.vocab.encode(probe).tolist() == model.vocab.encode(probe).tolist()
    rows = model.inference_rows([model.vocab.encode(probe)])
    assert torch.allclose(loaded.user_vectors(rows), model.user_vectors(rows))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["hash_buckets"] = 0
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "m" / "checksums.json").unlink()  # edited by hand: the consistency check, not the checksum
    with pytest.raises(CheckpointError, match="4 hash buckets"):
        SequenceRecommender.from_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="model.hash_buckets"):
        SequenceRecommender(ModelConfig(n_tokens=8, hash_buckets=5))

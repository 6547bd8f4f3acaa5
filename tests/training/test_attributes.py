"""Item-attribute objectives: shapes and gradients, and a generated task on which the
attributes carry the signal (the gain over plain cloze or next-item must vanish when they are
shuffled)."""

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from recbert.config import EvalConfig, ModelConfig, StageConfig
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.vocab import N_SPECIAL, ItemVocab
from recbert.errors import ConfigError
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.recommender import SequenceRecommender
from recbert.training.attributes import attribute_loss, attribute_losses, batch_items
from recbert.training.objectives import build_objective
from recbert.training.trainer import train_stage


def test_attribute_loss_is_the_multi_label_cross_entropy_and_skips_rows_without_values():
    torch.manual_seed(0)
    emb = nn.Embedding(5, 4, padding_idx=0)  # values 1..4
    vectors = torch.randn(3, 4, requires_grad=True)
    values = torch.tensor([[1, 3], [0, 0], [4, 0]])
    loss = attribute_loss(vectors, values, emb)
    logp = torch.log_softmax(vectors @ emb.weight[1:].T, dim=1)
    expected = (-(logp[0, 0] + logp[0, 2]) / 2 - logp[2, 3]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert vectors.grad[1].abs().sum() == 0 and vectors.grad[0].abs().sum() > 0
    assert emb.weight.grad is not None and emb.weight.grad[0].abs().sum() == 0  # 'none' is never a class
    assert attribute_loss(vectors, torch.zeros(3, 2, dtype=torch.long), emb).item() == 0.0


def test_batch_items_are_the_distinct_real_items():
    inputs = torch.tensor([[0, 1, 3, 5], [2, 5, 7, 40]])  # PAD, MASK, UNK, items; 40 beyond the catalogue
    labels = torch.tensor([[0, 0, 0, 6], [0, 0, 9, 0]])
    assert batch_items(inputs, labels, n_items=10).tolist() == [3, 5, 6, 7, 9]


CLUSTERS, PER_CLUSTER = 20, 10


def clustered(seed=0, n_users=150, length=7):
    """Each user draws items from one cluster of 10 (attribute = cluster): the next item is
    one of its cluster's unseen items, which the attributes name and co-occurrence must
    otherwise reveal."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        c = int(rng.integers(CLUSTERS))
        users += [u] * length
        items += (c * PER_CLUSTER + rng.choice(PER_CLUSTER, length, replace=False)).tolist()
        times += list(range(length))
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times})


def model_with_attributes(vocab, cluster_of, seed=0):
    cfg = ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, max_len=8, dropout=0.1, attention_dropout=0.1,
                      n_tokens=len(vocab), feature_cardinalities={"cluster": CLUSTERS}, feature_widths={"cluster": 1})
    torch.manual_seed(seed)
    model = SequenceRecommender(cfg)
    table = torch.zeros(len(vocab), 1, dtype=torch.long)
    ids = np.arange(CLUSTERS * PER_CLUSTER)
    table[torch.from_numpy(vocab.encode(ids)), 0] = torch.from_numpy(cluster_of[ids] + 1)
    model.embeddings.set_feature_table("cluster", table)
    return model


EVAL = EvalConfig(ks=[10], select_metric="hr@10", sampled_negatives=0, exclude_seen=True)


def hr10(objective, cluster_of, seed=0):
    events = clustered()
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab, 2))
    model = model_with_attributes(vocab, cluster_of, seed)
    stage = StageConfig(objective=objective, epochs=20, lr=1e-2, batch_size=16, patience=50, warmup_ratio=0.0,
                        mask_prob=0.3, eval_every=20)
    res = train_stage(model, splits, stage, EVAL, seed=seed)
    parts = res.history[-1]
    return evaluate_ranking(model, splits.test, EVAL)["unseen/hr@10"], parts


@pytest.mark.parametrize("objective, plain_objective, item_part, margin", [
    ("mlm_attributes", "mlm", "cloze", 0.2),
    ("next_item_attributes", "next_item", "next_item", 0.1),  # the causal counterpart
])
def test_attribute_objectives_learn_from_attributes_and_the_gain_vanishes_when_shuffled(
        objective, plain_objective, item_part, margin):
    true = np.repeat(np.arange(CLUSTERS), PER_CLUSTER)
    shuffled = np.random.default_rng(1).permutation(true)
    with_attr, parts = hr10(objective, true)
    plain, _ = hr10(plain_objective, true)
    shuffled_attr, _ = hr10(objective, shuffled)
    chance = 10 / (CLUSTERS * PER_CLUSTER)
    assert {f"train/{item_part}", "train/masked_attributes", "train/item_attributes"} <= set(parts)
    assert with_attr > 0.8 > 10 * chance, with_attr  # the cluster's unseen items on top
    assert with_attr > plain + margin, (with_attr, plain)
    assert shuffled_attr < plain + 0.05, (shuffled_attr, plain)  # no signal, no gain


@pytest.mark.parametrize("objective", ["mlm_attributes", "next_item_attributes"])
def test_attribute_objective_needs_side_features(objective):
    events = clustered(n_users=20)
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab, 2))
    model = SequenceRecommender(ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_len=8,
                                            n_tokens=len(vocab)))
    with pytest.raises(ConfigError, match=f"pretrain.objective = '{objective}' needs item side features"):
        train_stage(model, splits, StageConfig(objective=objective, epochs=1), EVAL, name="pretrain")


def test_attribute_losses_give_gradients_to_encoder_items_and_attributes():
    events = clustered(n_users=20)
    vocab = ItemVocab.build(events["item_id"])
    model = model_with_attributes(vocab, np.repeat(np.arange(CLUSTERS), PER_CLUSTER))
    inputs = torch.tensor([[0, N_SPECIAL + 1, 1, N_SPECIAL + 4]])
    labels = torch.tensor([[0, 0, N_SPECIAL + 2, 0]])
    out = model(inputs, causal=False)
    hidden = out.sequence_output[labels > 0]
    parts = attribute_losses(model.embeddings, hidden, labels[labels > 0], batch_items(inputs, labels, 200))
    (parts["masked_attributes"] + parts["item_attributes"]).backward()
    assert all(torch.isfinite(v) and v > 0 for v in parts.values())
    assert model.embeddings.features["cluster"].weight.grad.abs().sum() > 0
    assert model.embeddings.item.weight.grad[N_SPECIAL + 4].abs().sum() > 0
    assert model.encoder.layers[0].attention.qkv.weight.grad.abs().sum() > 0


def test_next_item_attribute_objective_is_causal_and_its_attribute_part_reaches_the_attribute_table():
    events = clustered(n_users=20)
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab, 2))
    model = model_with_attributes(vocab, np.repeat(np.arange(CLUSTERS), PER_CLUSTER))
    objective = build_objective("train", StageConfig(objective="next_item_attributes", batch_size=8), model,
                                splits.train)
    assert objective.causal
    inputs, labels = next(iter(objective.batches(0)))
    assert (labels[:, :-1][inputs[:, 1:] > 0] == inputs[:, 1:][inputs[:, 1:] > 0]).all()  # shifted by one
    step = objective.loss(model, (inputs, labels))
    assert set(step.parts) == {"next_item", "masked_attributes", "item_attributes"}
    assert step.total.item() == pytest.approx(sum(v.item() for v in step.parts.values()), rel=1e-5)
    step.total.backward()
    assert model.embeddings.features["cluster"].weight.grad.abs().sum() > 0
    # the future never reaches a position: the first position's output ignores what follows it
    altered = inputs.clone()
    altered[:, 1:] = torch.where(altered[:, 1:] > 0, N_SPECIAL, altered[:, 1:])
    model.eval()
    assert torch.allclose(model(inputs, causal=True).sequence_output[:, 0],
                          model(altered, causal=True).sequence_output[:, 0], atol=1e-6)

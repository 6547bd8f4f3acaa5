"""The same-target contrastive objective (DuoRec): the InfoNCE term, the prefix sampler,
and a generated task on which next-item training with the term learns far above chance."""

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recbert.config import EvalConfig, ModelConfig, StageConfig
from recbert.data.sequences import Sequences, build_sequences, leave_one_out
from recbert.data.shards import ShardSet
from recbert.data.vocab import N_SPECIAL, PAD, ItemVocab
from recbert.errors import ConfigError
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.recommender import SequenceRecommender
from recbert.training.contrastive import SameTargetPrefixes, info_nce
from recbert.training.objectives import NextItemContrastiveObjective
from recbert.training.trainer import train_stage


def naive_info_nce(a, b, targets, tau):
    z = torch.cat([a, b])
    t = torch.cat([targets, targets])
    n2 = len(z)
    losses = []
    for i in range(n2):
        j = (i + len(a)) % n2
        others = [k for k in range(n2) if k != i and (k == j or t[k] != t[i])]
        logits = torch.stack([z[i] @ z[k] / tau for k in others])
        losses.append(-F.log_softmax(logits, 0)[others.index(j)])
    return torch.stack(losses).mean()


def test_info_nce_is_the_symmetric_loss_without_same_target_negatives():
    torch.manual_seed(0)
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4, requires_grad=True)
    targets = torch.tensor([3, 7, 3, 9, 10])
    got = info_nce(a, b, targets, 0.5)
    assert got.item() == pytest.approx(naive_info_nce(a, b, targets, 0.5).item(), rel=1e-5)
    got.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_cosine_info_nce_is_the_dot_loss_of_the_normalised_views_and_ignores_norms():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    targets = torch.tensor([1, 2, 3, 1, 5, 6])
    got = info_nce(a, b, targets, 0.2, "cosine")
    assert got.item() == pytest.approx(naive_info_nce(F.normalize(a, dim=1), F.normalize(b, dim=1), targets,
                                                      0.2).item(), rel=1e-5)
    scales = torch.rand(6, 1) * 10 + 0.1
    assert info_nce(a * scales, b * scales.flip(0), targets, 0.2, "cosine").item() == pytest.approx(got.item(),
                                                                                                  rel=1e-5)
    assert info_nce(a * scales, b, targets, 0.2).item() != pytest.approx(info_nce(a, b, targets, 0.2).item())


def test_info_nce_is_low_for_matching_views_and_high_for_swapped_ones():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(16, 8), dim=1) * 4
    targets = torch.arange(16)
    assert info_nce(a, a + 0.01 * torch.randn(16, 8), targets, 1.0) < 0.1
    assert info_nce(a, a.roll(1, 0), targets, 1.0) > 5.0


def sequences(rows):
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return Sequences(np.arange(len(rows)), items, offsets)


def test_prefixes_are_followed_by_the_target_and_drawn_uniformly():
    seqs = sequences([[5, 6, 7, 8], [9, 7, 5], [7, 6], [6, 10, 11, 12, 13, 7]])
    prefixes = SameTargetPrefixes(seqs, max_len=3)
    assert prefixes.count(np.array([5, 6, 7, 8, 9, 99])).tolist() == [1, 2, 3, 1, 0, 0]  # 9 starts its sequence
    g = torch.Generator().manual_seed(0)
    drawn = prefixes.draw(np.full(3000, 7), g)
    seen = {tuple(int(x) for x in row if x != PAD) for row in drawn}
    assert seen == {(5, 6), (9,), (11, 12, 13)}  # cut to max_len = 3 events
    counts = [sum(tuple(int(x) for x in row if x != PAD) == p for row in drawn) for p in [(5, 6), (9,), (11, 12, 13)]]
    assert all(900 < c < 1100 for c in counts), counts
    assert (drawn[:, -1] != PAD).all()  # left-padded
    short = prefixes.draw(np.full(50, 7), g, width=1)
    assert short.shape == (50, 1) and set(short[:, 0].tolist()) == {6, 9, 13}  # the newest event before
    with pytest.raises(ValueError, match="token 9 never follows a prefix"):
        prefixes.draw(np.array([7, 9]), g)


def cyclic_events(n_users=200, n_items=60, length=8, seed=0):
    """Each user walks the catalogue in steps of one from a random start: the next item is
    the last one plus one."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        users += [u] * length
        items += [(start + k) % n_items for k in range(length)]
        times += list(range(length))
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times})


EVAL = EvalConfig(ks=[10], select_metric="hr@10", sampled_negatives=0, exclude_seen=True)


def check_learns_the_cyclic_task(objective: str) -> None:
    """``objective`` (next-item plus a contrastive term at weight 0.5) learns the cyclic walk
    far above chance, and its contrastive term falls."""
    events = cyclic_events()
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab, 2))
    torch.manual_seed(0)
    model = SequenceRecommender(ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, max_len=8, dropout=0.1,
                                            attention_dropout=0.1, n_tokens=len(vocab)))
    stage = StageConfig(objective=objective, epochs=15, lr=1e-2, batch_size=32, patience=50,
                        warmup_ratio=0.0, eval_every=15, contrastive_weight=0.5)
    res = train_stage(model, splits, stage, EVAL, seed=0)
    first, last = res.history[0], res.history[-1]
    assert {"train/next_item", "train/contrastive"} <= set(last)
    assert last["train/contrastive"] < first["train/contrastive"]
    hr = evaluate_ranking(model, splits.test, EVAL)["unseen/hr@10"]
    assert hr > 0.9 > 5 * (10 / 60), hr  # chance: 10 of 60 items
    assert model.causal


def test_the_objective_learns_a_generated_task_far_above_chance():
    check_learns_the_cyclic_task("next_item_contrastive")


def make_objective(train, seed=0):
    stage = StageConfig(objective="next_item_contrastive", epochs=1, batch_size=4)
    return NextItemContrastiveObjective("train", train, 6, N_SPECIAL + 20, stage, seed)


def test_batches_carry_same_target_prefixes_and_the_draws_resume():
    seqs = sequences([[3, 4, 5, 6], [7, 5, 8], [5, 6, 9], [10, 11, 6], [12, 5]])
    obj = make_objective(seqs)
    prefixes = SameTargetPrefixes(seqs, 6)
    for inputs, labels, keep, positives in obj.batches(1):
        assert keep.all()
        assert positives.shape[1] <= inputs.shape[1]
        for target, row in zip(labels[:, -1].tolist(), positives.tolist()):
            prefix = [x for x in row if x != PAD]
            places = prefixes.places[prefixes.first[target]:prefixes.first[target + 1]]
            assert any(seqs.items[p - len(prefix):p].tolist() == prefix for p in places)
    state = obj.state_dict()
    a = [b[3].tolist() for b in obj.batches(2)]
    other = make_objective(seqs)
    other.load_state_dict(state)
    assert [b[3].tolist() for b in other.batches(2)] == a


def test_the_step_loss_has_both_parts_and_gradients():
    seqs = sequences([[3, 4, 5, 6], [7, 5, 8], [5, 6, 9], [10, 11, 6], [12, 5]])
    obj = make_objective(seqs)
    torch.manual_seed(0)
    model = SequenceRecommender(ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=6,
                                            n_tokens=N_SPECIAL + 20)).train()
    step = obj.loss(model, next(iter(obj.batches(1))))
    assert set(step.parts) == {"next_item", "contrastive"}
    expected = step.parts["next_item"] + 0.1 * step.parts["contrastive"]
    assert step.total.item() == pytest.approx(expected.item(), rel=1e-6)
    step.total.backward()
    assert model.embeddings.item.weight.grad.abs().sum() > 0


def test_streamed_shards_are_refused(tmp_path):
    shards = ShardSet.__new__(ShardSet)
    with pytest.raises(ConfigError, match="next_item_contrastive.*unset data.shards"):
        make_objective(shards)


@pytest.mark.parametrize("bad", [{"contrastive_weight": -1.0}, {"contrastive_temperature": 0.0}])
def test_bad_contrastive_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="contrastive_"):
        StageConfig(**bad)

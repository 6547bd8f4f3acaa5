"""Lazy item updates: sparse gradients + SparseAdam move only the items of the batch;
clipping counts sparse gradients; refused with the full softmax."""

from __future__ import annotations

import pytest
import torch

from recbert.config import ModelConfig, RunConfig, StageConfig
from recbert.data.vocab import N_SPECIAL
from recbert.errors import ConfigError
from recbert.model.recommender import SequenceRecommender
from recbert.training.losses import LossContext, SampledSoftmaxLoss
from recbert.training.optim import clip_gradients, make_optimizer

N_ITEMS = 50


def model_and_loss(seed=0):
    torch.manual_seed(seed)
    model = SequenceRecommender(ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_len=6, dropout=0.0,
                                            attention_dropout=0.0, n_tokens=N_ITEMS + N_SPECIAL))
    stage = StageConfig(loss="sampled_softmax", negatives=5, in_batch_negatives=False, lazy_item_updates=True)
    return model, SampledSoftmaxLoss(LossContext(stage, N_ITEMS, None, torch.Generator().manual_seed(seed)))


def step(model, loss, optimizer, rows):
    out = model(rows, causal=True).sequence_output
    loss_value = loss(out[:, :-1].reshape(-1, 16), rows[:, 1:].reshape(-1), model.scorer)
    optimizer.zero_grad(set_to_none=True)
    loss_value.backward()
    optimizer.step()


@pytest.mark.parametrize("lazy", [True, False])
def test_lazy_updates_leave_rows_of_absent_items_unchanged(lazy):
    model, loss = model_and_loss()
    optimizer = make_optimizer(model, 1e-2, 0.0, lazy_items=lazy)
    table = model.embeddings.item.weight
    first = torch.tensor([[N_SPECIAL + i for i in range(6)]])  # items 0..5, then items 20..25 only
    later = torch.tensor([[N_SPECIAL + 20 + i for i in range(6)]])
    step(model, loss, optimizer, first)
    after_first = table.detach().clone()
    loss.sampler.sample = lambda: torch.arange(20, 25)  # negatives among the later items only
    for _ in range(3):
        step(model, loss, optimizer, later)
    moved = (table.detach() != after_first).any(1)
    touched_first = torch.arange(N_SPECIAL, N_SPECIAL + 6)
    if lazy:
        assert table.grad is None or table.grad.is_sparse
        assert not moved[touched_first].any(), "lazy: rows absent from a batch must not move"
        assert moved[N_SPECIAL + 20:N_SPECIAL + 26].all()
    else:
        assert moved[touched_first].all(), "dense Adam keeps moving rows with stale moments"


def test_lazy_updates_learn_the_ring_and_restore_dense_lookups():
    from recbert.evaluation.ranking import evaluate_ranking
    from recbert.training.trainer import train_stage
    from tests.training.test_trainer import EVAL, setup

    model, splits = setup()
    stage = StageConfig(objective="next_item", loss="sampled_softmax", negatives=16, lazy_item_updates=True,
                        epochs=12, lr=3e-3, batch_size=64, patience=50, warmup_ratio=0.0)
    train_stage(model, splits, stage, EVAL, seed=0)
    assert evaluate_ranking(model, splits.test, EVAL)["all/hr@10"] > 0.8
    assert model.embeddings.item.sparse is False


def test_clipping_counts_sparse_gradients_as_their_dense_form():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(3))
    dense_a, grad_b = torch.randn(8, 4), torch.randn(3)
    dense_a[[1, 4, 6]] = 0
    a.grad, b.grad = dense_a.to_sparse(), grad_b.clone()
    clip_gradients([a, b], 0.5)
    ref_a, ref_b = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    ref_a.grad, ref_b.grad = dense_a.clone(), grad_b.clone()
    torch.nn.utils.clip_grad_norm_([ref_a, ref_b], 0.5)
    torch.testing.assert_close(a.grad.to_dense(), ref_a.grad)
    torch.testing.assert_close(b.grad, ref_b.grad)


def test_lazy_updates_need_a_sampled_loss():
    with pytest.raises(ConfigError, match="lazy_item_updates needs a sampled loss"):
        RunConfig.load(None, ["train.lazy_item_updates=true"])
    RunConfig.load(None, ["train.lazy_item_updates=true", "train.loss=gbce"])

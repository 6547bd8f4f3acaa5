"""CL4SRec's objective (next_item_augmented): the views it trains on, its step loss and
gradients, and a generated task on which it learns far above chance."""

import pytest
import torch

from recbert.config import DataConfig, ModelConfig, StageConfig
from recbert.data.shards import write_shards
from recbert.data.vocab import MASK, N_SPECIAL, PAD
from recbert.errors import ConfigError
from recbert.model.recommender import SequenceRecommender
from recbert.training.objectives import NextItemAugmentedObjective
from tests.conftest import cyclic_events
from tests.training.test_contrastive import check_learns_the_cyclic_task, sequences

SEQS = [[3, 4, 5, 6, 7, 8], [7, 5, 8], [5, 6, 9, 10], [10, 11, 6], [12, 5], [13, 14, 15, 16, 17]]


def make_objective(train, **stage):
    stage = StageConfig(objective="next_item_augmented", epochs=1, batch_size=4, **stage)
    return NextItemAugmentedObjective("train", train, 6, N_SPECIAL + 20, stage, seed=0)


def test_batches_carry_two_augmented_views_of_each_window_and_the_draws_resume():
    obj = make_objective(sequences(SEQS), augmentations=["mask"], mask_share=0.5)
    for inputs, labels, views in obj.batches(1):
        assert views.shape == (2 * len(inputs), inputs.shape[1])
        for k, row in enumerate(torch.cat([inputs, inputs])):
            view = views[k]
            hidden = view == MASK
            assert int(hidden.sum()) == int((row != PAD).sum()) // 2
            assert torch.equal(view[~hidden], row[~hidden])
    state = obj.state_dict()
    a = [b[2].tolist() for b in obj.batches(2)]
    other = make_objective(sequences(SEQS), augmentations=["mask"], mask_share=0.5)
    other.load_state_dict(state)
    assert [b[2].tolist() for b in other.batches(2)] == a
    assert [b[2].tolist() for b in obj.batches(2)] != a  # fresh draws when not resumed


def test_the_step_loss_has_both_parts_and_gradients():
    obj = make_objective(sequences(SEQS))
    torch.manual_seed(0)
    model = SequenceRecommender(ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=6,
                                            n_tokens=N_SPECIAL + 20)).train()
    step = obj.loss(model, next(iter(obj.batches(1))))
    assert set(step.parts) == {"next_item", "contrastive"}
    assert step.total.item() == pytest.approx((step.parts["next_item"] + 0.1 * step.parts["contrastive"]).item(),
                                              rel=1e-6)
    assert step.parts["contrastive"] > 0
    step.total.backward()
    assert model.embeddings.item.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in model.encoder.named_parameters() if "weight" in n)


def test_the_objective_learns_a_generated_task_far_above_chance():
    check_learns_the_cyclic_task("next_item_augmented")


@pytest.mark.parametrize("bad,match", [({"augmentations": []}, "augmentations must name"),
                                       ({"crop_keep": 0.0}, "crop_keep"), ({"mask_share": 1.5}, "mask_share"),
                                       ({"reorder_share": -0.1}, "reorder_share")])
def test_bad_augmentation_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        StageConfig(**bad)


def test_streamed_shards_give_the_same_kind_of_batches(tmp_path):
    events = cyclic_events(n_users=40, seed=3, min_len=3, max_len=12)
    events.write_parquet(tmp_path / "events.parquet")
    data = DataConfig(events=str(tmp_path / "events.parquet"), shard_events=100)
    shards = write_shards(data.events, tmp_path / "shards", data, row_group_users=8)
    stage = StageConfig(objective="next_item_augmented", epochs=1, batch_size=8)
    obj = NextItemAugmentedObjective("train", shards, 6, len(shards.vocab()), stage, seed=0, data=data)
    n_windows = 0
    for inputs, labels, views in obj.batches(1):
        assert views.shape == (2 * len(inputs), inputs.shape[1])
        assert ((views != PAD).sum(1) <= (torch.cat([inputs, inputs]) != PAD).sum(1)).all()
        n_windows += len(inputs)
    assert n_windows == len(obj)

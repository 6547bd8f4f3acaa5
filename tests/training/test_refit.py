import torch

from recbert.config import StageConfig
from recbert.training.loop import FitResult
from recbert.training.refit import refit_epochs, refit_stage
from recbert.training.trainer import train_stage
from tests.training.test_trainer import EVAL, setup


def _refit(draws_before: int) -> dict[str, torch.Tensor]:
    """A refit of 3 chosen epochs after the global generator drew ``draws_before`` numbers
    (what a selection run's dropout leaves behind: more for a longer run)."""
    model, splits = setup()
    torch.rand(draws_before)
    stage = StageConfig(objective="next_item", epochs=6, lr=3e-3, batch_size=64)
    selected = FitResult(name="train", best_epoch=3, epochs_run=6)
    refit_stage(model, splits, stage, selected, EVAL, seed=5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_refit_depends_on_its_start_and_chosen_epochs_not_on_the_selection_runs_length():
    short, long = _refit(10), _refit(10_000)
    assert short.keys() == long.keys()
    assert all(torch.equal(short[k], long[k]) for k in short)


def test_without_the_reseed_the_same_training_differs_with_the_generators_past():
    # what makes the equality above hold: plain training draws its dropout from the global
    # generator, so the same stage after a different number of draws trains other weights
    runs = []
    for draws in (10, 10_000):
        model, splits = setup()
        torch.rand(draws)
        stage = StageConfig(objective="next_item", epochs=3, lr=3e-3, batch_size=64)
        train_stage(model, splits, stage, EVAL, seed=5, stop_after=3)
        runs.append(model.state_dict())
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_refit_epochs_are_the_best_epoch_or_every_epoch_run():
    assert refit_epochs(FitResult(name="t", best_epoch=4, epochs_run=9)) == 4
    assert refit_epochs(FitResult(name="t", best_epoch=0, epochs_run=7)) == 7

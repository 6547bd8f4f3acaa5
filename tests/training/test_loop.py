"""The one training loop, on a toy objective: steps, records, validation, early stopping
with the best weights restored, the starting weights as the first best, divergence."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

from recbert.config import StageConfig
from recbert.errors import DivergenceError
from recbert.training import loop
from recbert.training.loop import FitSettings, StepLoss, fit
from recbert.training.objectives import OBJECTIVES


class LineObjective:
    """Fit y = 3x with one weight; 4 batches of 8 points per epoch."""

    name = "toy"
    steps_per_epoch = 4

    def __init__(self, scale: float = 1.0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 1, generator=g)
        self.scale = scale

    def batches(self, epoch):
        for i in range(0, 32, 8):
            yield self.x[i:i + 8], 3 * self.x[i:i + 8]

    def loss(self, model, batch):
        x, y = batch
        err = ((model(x) - y) ** 2).mean() * self.scale
        return StepLoss(err, n=len(x), parts={"abs": (model(x) - y).abs().mean().detach()})


def make(lr=0.1):
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_fit_trains_records_every_epoch_and_sends_them_to_the_sink():
    model, opt, sched = make()
    seen = []
    res = fit(model, LineObjective(), opt, sched, FitSettings(epochs=5, grad_clip=0.0),
              sink=lambda r, s: seen.append((s, r)),
              step_offset=10)
    assert abs(model.weight.item() - 3.0) < 0.1
    assert res.epochs_run == 5 and res.stopped == "completed" and res.sequences == 5 * 32
    assert [s for s, _ in seen] == [11, 12, 13, 14, 15]
    rec = res.history[-1]
    assert rec["toy/steps"] == 4 and rec["toy/lr"] == 0.1 and rec["toy/abs"] > 0
    assert res.history[0]["toy/loss"] > rec["toy/loss"]


def test_fit_hands_the_allocators_kept_pages_back_every_epoch_and_every_n_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "release_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(loop, "RELEASE_EVERY_STEPS", 3)
    model, opt, sched = make()
    fit(model, LineObjective(), opt, sched, FitSettings(epochs=2, grad_clip=0.0))
    assert len(calls) == 2 * (1 + 1)  # per epoch of 4 steps: after step 3, and at its end


def test_early_stopping_restores_the_best_validated_weights():
    model, opt, sched = make()
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.4, 0.3])
    weights = []

    def validate(m):
        weights.append(m.weight.item())
        return next(scores), {"val/score": 0.0}

    res = fit(model, LineObjective(), opt, sched, FitSettings(epochs=10, patience=2), validate)
    assert res.best_epoch == 2 and res.best_score == 0.9 and res.epochs_run == 4
    assert res.stopped.startswith("early stop") and model.weight.item() == weights[1]


def test_the_starting_weights_are_the_first_best_and_lower_can_be_better():
    model, opt, sched = make()
    start = model.weight.item()
    scores = iter([1.0, 2.0, 3.0])
    res = fit(model, LineObjective(), opt, sched,
              FitSettings(epochs=2, patience=5, higher_is_better=False, evaluate_first=True),
              lambda m: (next(scores), {}))
    assert res.best_epoch == 0 and res.best_score == 1.0 and model.weight.item() == start


def test_a_non_finite_loss_stops_before_it_reaches_the_weights():
    model, opt, sched = make()
    start = model.weight.item()
    with pytest.raises(DivergenceError, match=r"toy diverged at epoch 1, step 1"):
        fit(model, LineObjective(scale=float("inf")), opt, sched, FitSettings(epochs=3))
    assert model.weight.item() == start


def test_the_objective_registry_is_the_configs_list_of_objectives():
    assert tuple(OBJECTIVES) == typing.get_args(typing.get_type_hints(StageConfig)["objective"])


def test_bf16_autocast_trains_with_float32_weights():
    """precision='bf16' runs the objective under bfloat16 autocast (CPU stand-in for the GPU
    path); the weights and their updates stay float32."""
    model, opt, sched = make()
    seen = []

    class Probe(LineObjective):
        def loss(self, m, batch):
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            return super().loss(m, batch)

    res = fit(model, Probe(), opt, sched, FitSettings(epochs=5, grad_clip=0.0, precision="bf16"))
    assert all(seen) and model.weight.dtype == torch.float32
    assert abs(model.weight.item() - 3.0) < 0.1 and res.history[-1]["toy/loss"] < res.history[0]["toy/loss"]
    model2, opt2, sched2 = make()
    fit(model2, Probe(), opt2, sched2, FitSettings(epochs=1, grad_clip=0.0))
    assert seen[-1] is False  # fp32 by default

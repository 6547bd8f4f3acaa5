"""Refit: once validation has chosen a stage's epoch count, train the stage again from
the weights it started from (a fresh model, or the pretrained encoder) on the training
sequences plus every validation user's target, for those epochs, replaying its schedule,
without validation. The train job refits the last stage.

Why: under leave-one-out the validation target is the newest event a model may learn
from before the test, and item popularity drifts between the last positions (Beauty: item
frequency in training correlates 0.64 with the validation targets' and 0.45 with the test
targets', BENCHMARKS.md). A model selected on validation never trained on that event.

A refit starts its random streams afresh from the run's seed (dropout draws from the global
generators), so it depends on the weights it starts from and the epochs chosen, not on how
long the selection ran past its best epoch (a longer patience chooses the same model and
now refits it to the same weights)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import torch

from recbert.config import DataConfig, EvalConfig, StageConfig
from recbert.data.sequences import Splits, with_validation_targets
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext, rank_seed, seed_everything
from recbert.training.checkpoints import Checkpointing
from recbert.training.loop import FitResult
from recbert.training.trainer import MetricSink, train_stage

log = logging.getLogger("recbert.train")


def refit_epochs(result: FitResult) -> int:
    """The epochs a refit trains a stage for: its best validated epoch, or every epoch it
    ran when it never validated (or never improved on the start)."""
    return result.best_epoch or result.epochs_run


def refit_stage(model: SequenceRecommender, splits: Splits, stage: StageConfig, selected: FitResult,
                eval_config: EvalConfig, seed: int = 0, data: DataConfig = DataConfig(),
                device: torch.device | str = "cpu", sink: Optional[MetricSink] = None, step_offset: int = 0,
                context: DistributedContext = DistributedContext(), checkpointing: Optional[Checkpointing] = None,
                resume: Optional[dict[str, Any]] = None) -> FitResult:
    """Train ``model`` (holding the weights the stage started from) in place through
    ``stage`` again, for the epochs ``selected`` (the result of its selection run) chose,
    named ``refit_<stage>``, on the training sequences plus the validation targets
    (``checkpointing`` / ``resume`` as in :func:`~recbert.training.loop.fit`: a resumed refit
    continues the random states its checkpoint saved)."""
    seed_everything(rank_seed(seed, context.rank))
    refit = dataclasses.replace(splits, train=with_validation_targets(splits.train, splits.val))
    log.info("refit of %s on %d sequences with the validation targets: %d epochs", selected.name, len(refit.train),
             refit_epochs(selected))
    return train_stage(model, refit, stage, eval_config, name=f"refit_{selected.name}", seed=seed, data=data,
                       device=device, sink=sink, step_offset=step_offset, context=context,
                       stop_after=refit_epochs(selected), checkpointing=checkpointing, resume=resume)

"""One training stage of the recommender: MLM (cloze, bidirectional) or next-item
(causal, a loss at every position), run by the one loop (:func:`recbert.training.loop.fit`)
with early stopping on the validation ranking metric."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from recbert.config import DataConfig, EvalConfig, StageConfig
from recbert.data.sequences import Splits
from recbert.errors import ConfigError
from recbert.evaluation.ranking import evaluate_ranking, selection_protocol
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext
from recbert.training.checkpoints import Checkpointing
from recbert.training.loop import FitResult, FitSettings, fit
from recbert.training.objectives import OBJECTIVES, build_objective
from recbert.training.optim import lr_schedule, make_optimizer

log = logging.getLogger("recbert.train")

MetricSink = Callable[[dict[str, float], int], None]


StageResult = FitResult  # the result of one stage: the loop's result


def train_stage(
    model: SequenceRecommender,
    splits: Splits,
    stage: StageConfig,
    eval_config: EvalConfig,
    name: str = "train",
    seed: int = 0,
    data: DataConfig = DataConfig(),
    device: torch.device | str = "cpu",
    sink: Optional[MetricSink] = None,
    step_offset: int = 0,
    context: DistributedContext = DistributedContext(),
    stop_after: Optional[int] = None,
    checkpointing: Optional[Checkpointing] = None,
    resume: Optional[dict[str, Any]] = None,
) -> FitResult:
    """Train ``model`` in place with ``stage.objective``; on return it holds the best
    validation weights and its attention is the objective's (causal for next-item).
    ``context``: the ranks that train together (data-parallel) and validate together (each
    ranks its share of the validation users). ``stop_after``: replay the stage's schedule
    (over ``stage.epochs``) for this many epochs without validation and keep the last
    weights (a refit, :mod:`recbert.training.refit`). ``checkpointing`` / ``resume``: as in
    :func:`~recbert.training.loop.fit`."""
    causal = OBJECTIVES[stage.objective].causal
    if stage.lazy_item_updates and context.distributed:
        raise ConfigError(f"{name}.lazy_item_updates (sparse item gradients) does not work with distributed "
                          f"training yet ({context.world_size} processes); set {name}.lazy_item_updates=false "
                          "or run one process")
    model.set_attention(causal)
    model.to(device)
    objective = build_objective(name, stage, model, splits.train, seed, data, device, context)
    optimizer = make_optimizer(model, stage.lr, stage.weight_decay, layer_decay=stage.layer_decay,
                               lazy_items=stage.lazy_item_updates)
    schedule = lr_schedule(optimizer, max(1, stage.epochs * objective.steps_per_epoch), stage.warmup_ratio,
                           stage.schedule)
    metric_key = f"{selection_protocol(eval_config)}/{eval_config.select_metric}"
    log.info("%s: %s objective, %d windows, %d batches/epoch", name, stage.objective, len(objective),
             objective.steps_per_epoch)

    def validate(m: SequenceRecommender) -> tuple[float, dict[str, float]]:
        metrics = evaluate_ranking(m, splits.val, eval_config, seed=seed, device=device, context=context)
        return metrics[metric_key], {f"val/{k}": v for k, v in metrics.items() if k != "n_users"}

    if len(splits.val) == 0:
        log.warning("%s: no validation users; early stopping is off and the last weights are kept", name)
    replay = stop_after is not None
    settings = FitSettings(epochs=stop_after if replay else stage.epochs, patience=stage.patience,
                           eval_every=stage.eval_every, grad_clip=stage.grad_clip,
                           max_minutes=None if replay else stage.max_minutes,
                           progress=log.isEnabledFor(logging.INFO),  # `recbert -q`: no progress bars
                           precision=stage.precision)
    validator = validate if len(splits.val) and not replay else None
    try:
        return fit(model, objective, optimizer, schedule, settings, validator, sink, step_offset, context,
                   checkpointing, resume)
    finally:
        model.embeddings.item.sparse = False  # lazy updates end with the stage

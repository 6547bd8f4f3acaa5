"""The one training loop of recbert: MLM pretraining, next-item training and fine-tuning
of task heads all run through :func:`fit`, with the objective as a pluggable part.

An objective (:class:`Objective`) yields an epoch's batches and turns one batch into a
loss (plus named parts such as a head and an auxiliary loss); :func:`fit` owns
everything around it: train/eval modes (frozen parts stay in eval mode), the optimiser
and schedule steps, gradient clipping, the finite-loss check at every step, validation
every ``eval_every`` epochs, early stopping with the best weights restored, the time
budget, a progress bar and the per-epoch record handed to a sink (MLflow).

Under distributed training (a :class:`~recbert.runtime.DistributedContext` of several
ranks) the training steps run through DistributedDataParallel, the per-epoch record holds
the means over all ranks, the validator runs on every rank and must return the same result
on each (:func:`~recbert.evaluation.ranking.evaluate_ranking` ranks a share of the users
per rank and gathers them), and rank 0 decides the time budget for all, so that every rank
keeps the same weights and stops together."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from recbert.allocator import RELEASE_EVERY_STEPS, release_free_memory
from recbert.errors import CheckpointError, DivergenceError
from recbert.runtime import DistributedContext, on_main, rng_state, set_rng_state
from recbert.training.checkpoints import Checkpointing
from recbert.training.distributed import sum_over_ranks, sum_values_over_ranks, wrap_for_training
from recbert.training.losses import check_finite_loss
from recbert.training.optim import clip_gradients, set_train_modes

log = logging.getLogger("recbert.train")
COUNT = "_sequences"  # the key of the epoch's sequence count among the sums reduced over ranks


@dataclass
class StepLoss:
    """One batch: the loss to minimise, its named parts (reported as per-epoch means)
    and the number of sequences it covered (the weight of its loss in the mean)."""

    total: Tensor
    n: int
    parts: dict[str, Tensor] = field(default_factory=dict)


class Objective(Protocol):
    """What :func:`fit` trains for. ``name`` prefixes the per-epoch record keys and
    names the stage in messages."""

    name: str
    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of epoch ``epoch`` (1-based), already on the model's device."""

    def loss(self, model: nn.Module, batch: Any) -> StepLoss:
        """The loss of one batch; the model is in training mode."""


# validate(model) -> (selection score, metrics to record); called in eval mode without grad,
# on every rank of a distributed run (the same result on each)
Validator = Callable[[nn.Module], tuple[float, dict[str, float]]]
Sink = Callable[[dict[str, float], int], None]


@dataclass
class FitSettings:
    epochs: int
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    grad_clip: float = 1.0  # 0 = off
    max_minutes: Optional[float] = None  # wall-time budget
    higher_is_better: bool = True
    evaluate_first: bool = False  # validate before training: the start is the first "best"
    progress: bool = False  # a tqdm bar per epoch
    # 'bf16': forward passes and losses under torch.autocast(bfloat16) on the model's device
    # (the weights, optimiser and gradients stay float32); 'fp32': plain float32
    precision: str = "fp32"


@dataclass
class FitResult:
    name: str
    best_score: float = math.nan
    best_epoch: int = 0  # 1-based; 0 = the starting weights (or never validated)
    epochs_run: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    sequences: int = 0
    stopped: str = "completed"
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch

    @property
    def stopped_early(self) -> bool:
        return self.stopped != "completed"


def fit(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler, settings: FitSettings,
        validate: Optional[Validator] = None, sink: Optional[Sink] = None, step_offset: int = 0,
        context: DistributedContext = DistributedContext(), checkpointing: Optional[Checkpointing] = None,
        resume: Optional[dict[str, Any]] = None) -> FitResult:
    """Train ``model`` in place; on return it holds the best validated weights (the last
    ones without a validator). Record keys: ``{name}/loss``, ``{name}/{part}``,
    ``{name}/lr``, ``{name}/steps``, ``{name}/epoch_seconds``,
    ``{name}/sequences_per_second`` and the validator's metrics; the sink gets each
    record at step ``step_offset + epoch``. A NaN/inf loss or validation score raises
    :class:`DivergenceError` naming the stage, epoch and step. ``context``: the ranks that
    train together (one process by default). ``checkpointing``: save the loop's state after
    every epoch (and every ``every_steps`` steps); ``resume``: such a state, to continue
    from (the same parts, built alike: the run then ends with the same weights)."""
    name = objective.name
    sign = 1.0 if settings.higher_is_better else -1.0
    trainable = [p for p in model.parameters() if p.requires_grad]
    net = wrap_for_training(model, context)  # what the training steps run through
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    result = FitResult(name)
    best_state = None
    waited = 0
    started = time.perf_counter()

    def run_validation(epoch: int) -> tuple[float, dict[str, float]]:
        model.eval()
        try:
            with torch.no_grad():
                score, metrics = validate(model)  # on every rank: a distributed validator gathers
        except DivergenceError as exc:
            when = f"before {name}" if epoch == 0 else f"{name} diverged at epoch {epoch}"
            raise DivergenceError(f"model scores are not finite: {when} ({exc.detail})", exc.detail) from None
        set_train_modes(model)
        return float(score), metrics

    first_epoch, partial = 1, None
    if resume is not None:  # a checkpoint of this stage (see checkpoint_state)
        first_epoch, partial, best_state, waited = _restore(resume, model, optimizer, schedule, objective, result,
                                                             context)
        started -= resume["elapsed"]
    elif validate is not None and settings.evaluate_first:
        result.best_score, _ = run_validation(0)
        best_state = _snapshot(model)

    def checkpoint(epoch: int, skip: int, done: bool, epoch_start: dict, sums: dict, count: int,
                   seconds: float) -> None:
        ranks = _gather_ranks({"objective": _objective_state(objective), "objective_epoch_start": epoch_start,
                               "rng": rng_state(), "sums": dict(sums), "count": count}, context)
        checkpointing.save({"next_epoch": epoch, "skip": skip, "done": done, "elapsed": time.perf_counter() - started,
                            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "result": dataclasses.asdict(result),
                            "waited": waited, "best_state": best_state, "epoch_seconds": seconds, "ranks": ranks,
                            "world_size": context.world_size})

    epochs = range(first_epoch, settings.epochs + 1) if not (resume and resume["done"]) else range(0)
    for epoch in epochs:
        set_train_modes(model)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        count = steps = 0
        prior_seconds = 0.0  # of this epoch, before the checkpoint it resumed from
        epoch_start = _objective_state(objective) if partial is None else partial["objective_epoch_start"]
        if partial is not None:
            _load_objective_state(objective, epoch_start)
        batches = iter(objective.batches(epoch))
        if partial is not None:  # resumed within this epoch: replay its batch draws up to the checkpoint
            for _ in range(partial["skip"]):
                next(batches)
            _load_objective_state(objective, partial["objective"])
            set_rng_state(partial["rng"])
            sums, count, steps, prior_seconds = dict(partial["sums"]), partial["count"], partial["skip"], \
                partial["epoch_seconds"]
            partial = None
        bar = tqdm(batches, total=objective.steps_per_epoch, initial=steps, desc=f"{name} {epoch}/{settings.epochs}",
                   leave=False, mininterval=1.0, disable=not settings.progress)
        for batch in bar:
            with autocast:
                step = objective.loss(net, batch)
            check_finite_loss(sum_over_ranks(step.total, context), name, epoch, steps + 1)
            optimizer.zero_grad(set_to_none=True)
            step.total.backward()
            if settings.grad_clip > 0:
                clip_gradients(trainable, settings.grad_clip)
            optimizer.step()
            schedule.step()
            steps += 1
            count += step.n
            for key, value in (("loss", step.total), *step.parts.items()):
                sums[key] = sums.get(key, 0.0) + value.item() * step.n
            if steps % 20 == 1:
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", seq_s=f"{count / (time.perf_counter() - t0):.0f}")
            if checkpointing and checkpointing.every_steps and steps % checkpointing.every_steps == 0 \
                    and steps < objective.steps_per_epoch:
                checkpoint(epoch, steps, False, epoch_start, sums, count, prior_seconds + time.perf_counter() - t0)
            if steps % RELEASE_EVERY_STEPS == 0:  # bound the allocator's kept pages (recbert.allocator)
                release_free_memory()
        bar.close()
        sums = sum_values_over_ranks({**sums, COUNT: float(count)}, context)
        count = int(sums.pop(COUNT))
        epoch_seconds = prior_seconds + time.perf_counter() - t0
        result.train_seconds += epoch_seconds
        result.sequences += count
        result.epochs_run = epoch
        record = {f"{name}/{k}": v / max(count, 1) for k, v in sums.items()}
        if not sums:
            record[f"{name}/loss"] = 0.0
        record.update({f"{name}/epoch_seconds": epoch_seconds, f"{name}/steps": float(steps),
                       f"{name}/sequences_per_second": count / max(epoch_seconds, 1e-9),
                       f"{name}/lr": optimizer.param_groups[-1]["lr"]})
        improved = False
        if validate is not None and (epoch % settings.eval_every == 0 or epoch == settings.epochs):
            score, metrics = run_validation(epoch)
            record.update(metrics)
            if math.isfinite(score) and (math.isnan(result.best_score) or sign * score > sign * result.best_score):
                result.best_score, result.best_epoch, waited, improved = score, epoch, 0, True
                best_state = _snapshot(model)
            else:
                waited += 1
            log.info("%s epoch %d: loss %.4f, val %.4f (best %.4f @ %d), %.1fs", name, epoch,
                     record[f"{name}/loss"], score, result.best_score, result.best_epoch, epoch_seconds)
        else:
            log.info("%s epoch %d: loss %.4f, %.1fs", name, epoch, record[f"{name}/loss"], epoch_seconds)
        result.history.append(record)
        if sink is not None:
            sink(record, step_offset + epoch)
        if not improved and waited >= settings.patience:
            result.stopped = f"early stop: no improvement in {settings.patience} evaluations"
        elif settings.max_minutes is not None and on_main(lambda: time.perf_counter() - started > 60 *
                                                          settings.max_minutes, context):
            result.stopped = f"time budget of {settings.max_minutes} min reached"
        if checkpointing:  # after the sink: a kill in between repeats this epoch's record, never loses it
            checkpoint(epoch + 1, 0, result.stopped_early or epoch == settings.epochs, _objective_state(objective),
                       {}, 0, 0.0)
        release_free_memory()  # after the epoch's evaluation, the other large allocations
        if result.stopped_early:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    if validate is None:
        log.info("%s: %s after %d epochs, without validation: the last weights are kept (%.0fs)", name,
                 result.stopped, result.epochs_run, result.seconds)
    else:
        log.info("%s: %s after %d epochs; best val %.4f at epoch %d (%.0fs)", name, result.stopped,
                 result.epochs_run, result.best_score, result.best_epoch, result.seconds)
    return result


def _objective_state(objective: Objective) -> dict[str, Any]:
    return objective.state_dict() if hasattr(objective, "state_dict") else {}


def _load_objective_state(objective: Objective, state: dict[str, Any]) -> None:
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state)


def _gather_ranks(state: dict[str, Any], context: DistributedContext) -> list[dict[str, Any]]:
    """This rank's part of a checkpoint, gathered from every rank (rank r's at index r)."""
    if not context.distributed:
        return [state]
    parts: list[Any] = [None] * context.world_size
    torch.distributed.all_gather_object(parts, state)
    return parts


def _restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule: torch.optim.lr_scheduler.LRScheduler, objective: Objective, result: FitResult,
             context: DistributedContext) -> tuple[int, Optional[dict[str, Any]], Optional[dict], int]:
    """Load a loop checkpoint into the parts; ``(first epoch, this rank's part of an epoch to
    finish or None, best weights, evaluations waited)``."""
    if state["world_size"] != context.world_size:
        raise CheckpointError(f"the checkpoint was written by {state['world_size']} process(es), this run has "
                              f"{context.world_size}: resume with the same number of processes")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    mine = state["ranks"][context.rank]
    _load_objective_state(objective, mine["objective"])
    set_rng_state(mine["rng"])
    partial = None
    if state["skip"]:
        partial = {**mine, "skip": state["skip"], "epoch_seconds": state["epoch_seconds"]}
    log.info("%s: resumed at epoch %d%s", result.name, state["next_epoch"],
             f", step {state['skip']}" if state["skip"] else "")
    return state["next_epoch"], partial, state["best_state"], state["waited"]


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})

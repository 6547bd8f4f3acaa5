"""The training loop for one stage: MLM (cloze, bidirectional) or next-item
(causal, a loss at every position). Each user window is encoded once per
epoch and the catalogue softmax is computed only where a target sits.
Early stopping on the validation metric keeps the best weights."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from recbert.config import EvalConfig, StageConfig
from recbert.errors import ConfigError, DivergenceError
from recbert.data.batches import left_pad, length_grouped_order, mask_tokens, next_item_pairs, training_windows
from recbert.data.sequences import Splits
from recbert.evaluation.ranking import evaluate_ranking, selection_protocol
from recbert.model.recommender import SequenceRecommender
from recbert.training.losses import LOSSES, check_finite_loss, gather_targets
from recbert.training.optim import make_optimizer, make_schedule

log = logging.getLogger("recbert.train")

MetricSink = Callable[[dict[str, float], int], None]


@dataclass
class StageResult:
    name: str
    best_score: float = -math.inf
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    sequences: int = 0
    stopped: str = "completed"
    history: list[dict[str, float]] = field(default_factory=list)


def train_stage(
    model: SequenceRecommender,
    splits: Splits,
    stage: StageConfig,
    eval_config: EvalConfig,
    name: str = "train",
    seed: int = 0,
    window_stride: Optional[int] = None,
    device: torch.device | str = "cpu",
    sink: Optional[MetricSink] = None,
    step_offset: int = 0,
    loss: str = "full_softmax",
) -> StageResult:
    """Train ``model`` in place; on return it holds the best validation weights."""
    causal = stage.objective == "next_item"
    if causal and model.config.reuse_block != "none":
        raise ConfigError(
            f"model.reuse_block={model.config.reuse_block!r} reads the whole sequence, which would leak future "
            "items into next-item training; use it with the mlm objective, or set model.reuse_block=none")
    model.config.attention = "causal" if causal else "bidirectional"
    model.to(device)
    max_len = model.config.max_len
    span = max_len + 1 if causal else max_len
    windows = training_windows(splits.train, span, window_stride or max_len, min_len=2 if causal else 1)
    items = splits.train.items
    n_tokens = model.config.n_tokens
    batches_per_epoch = math.ceil(len(windows) / stage.batch_size)
    optimizer = make_optimizer(model, stage)
    schedule = make_schedule(optimizer, stage, max(1, stage.epochs * batches_per_epoch))
    loss_fn = LOSSES[loss]
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    metric_key = f"{selection_protocol(eval_config)}/{eval_config.select_metric}"
    result = StageResult(name)
    best_state = None
    waited = 0
    started = time.perf_counter()
    log.info("%s: %s objective, %d windows, %d batches/epoch", name, stage.objective, len(windows), batches_per_epoch)
    validate = len(splits.val) > 0
    if not validate:
        log.warning("%s: no validation users; early stopping is off and the last weights are kept", name)

    for epoch in range(1, stage.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = length_grouped_order(windows.ends - windows.starts, stage.batch_size, rng)
        total, count = 0.0, 0
        bar = tqdm(range(batches_per_epoch), desc=f"{name} {epoch}/{stage.epochs}", leave=False, mininterval=1.0)
        for b in bar:
            idx = order[b * stage.batch_size:(b + 1) * stage.batch_size]
            rows = torch.from_numpy(left_pad(items, windows.starts[idx], windows.ends[idx], span)).to(device)
            if causal:
                inputs, labels = next_item_pairs(rows)
            else:
                inputs, labels = mask_tokens(rows.cpu(), n_tokens, stage.mask_prob, stage.last_item_mask_prob, gen)
                inputs, labels = inputs.to(device), labels.to(device)
            out = model(inputs, causal=causal)
            hidden, targets = gather_targets(out.sequence_output, labels)
            batch_loss = loss_fn(hidden, targets, model.scorer)
            check_finite_loss(batch_loss, name, epoch, b + 1)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            if stage.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
            optimizer.step()
            schedule.step()
            total += batch_loss.item() * len(idx)
            count += len(idx)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}", seq_s=f"{count / (time.perf_counter() - t0):.0f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        result.train_seconds += epoch_seconds
        result.sequences += count
        result.epochs_run = epoch
        record = {f"{name}/loss": total / max(count, 1), f"{name}/epoch_seconds": epoch_seconds,
                  f"{name}/sequences_per_second": count / epoch_seconds, f"{name}/lr": schedule.get_last_lr()[0]}
        if validate and (epoch % stage.eval_every == 0 or epoch == stage.epochs):
            try:
                metrics = evaluate_ranking(model, splits.val, eval_config, seed=seed, device=device)
            except DivergenceError as exc:
                raise DivergenceError(f"model scores are not finite: {name} diverged at epoch {epoch} ({exc.detail})",
                                      exc.detail) from None
            record.update({f"val/{k}": v for k, v in metrics.items() if k != "n_users"})
            score = metrics[metric_key]
            if score > result.best_score:
                result.best_score, result.best_epoch, waited = score, epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                waited += 1
            log.info("%s epoch %d: loss %.4f, val %s %.4f (best %.4f @ %d), %.1fs",
                     name, epoch, record[f"{name}/loss"], metric_key, score, result.best_score, result.best_epoch,
                     epoch_seconds)
        else:
            log.info("%s epoch %d: loss %.4f, %.1fs", name, epoch, record[f"{name}/loss"], epoch_seconds)
        result.history.append(record)
        if sink is not None:
            sink(record, step_offset + epoch)
        if waited >= stage.patience:
            result.stopped = f"early stop: no improvement in {stage.patience} evaluations"
            break
        if stage.max_minutes is not None and time.perf_counter() - started > 60 * stage.max_minutes:
            result.stopped = f"time budget of {stage.max_minutes} min reached"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    log.info("%s: %s after %d epochs; best val %s %.4f at epoch %d (%.0fs)", name, result.stopped,
             result.epochs_run, metric_key, result.best_score, result.best_epoch, result.seconds)
    return result

"""Batch job: events parquet -> sequences -> (MLM pretraining) -> training ->
full-ranking test evaluation -> model directory, all tracked in MLflow.

Under torchrun (``WORLD_SIZE`` > 1) the stages train data-parallel on all ranks, which
validate and test together (each ranks a share of the users); rank 0 alone logs to MLflow
and writes the model directory (and the shards, with ``data.shards``)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from recbert.config import RunConfig
from recbert.data.batches import pad_sequences
from recbert.data.events import EventSource
from recbert.data.features import load_item_features
from recbert.data.prepare import prepare_data, shard_splits
from recbert.data.shards import ensure_shards
from recbert.data.vocab import ItemVocab
from recbert.evaluation.ranking import evaluate_ranking, selection_protocol
from recbert.model.checkpoint import METRICS_FILE, RUN_CONFIG_FILE
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext, distributed, on_main, rank_seed, seed_everything, set_threads
from recbert.tracking import MODEL_ARTIFACT, Tracker
from recbert.training.refit import refit_stage
from recbert.training.trainer import StageResult, train_stage

log = logging.getLogger("recbert.pipeline")


@dataclass
class TrainResult:
    run_id: Optional[str]
    model_dir: Path
    test_metrics: dict[str, float]
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    is_main: bool = True  # False on the ranks other than 0 of a distributed run (they wrote nothing)


def build_model(config: RunConfig, vocab: ItemVocab) -> SequenceRecommender:
    """A new recommender for ``vocab``: ``config.model`` with the sizes the data decides
    (tokens, hash buckets, side-feature tables) filled in a copy; ``config`` itself is not changed."""
    tables = []
    if config.data.item_features and config.data.item_feature_columns:
        tables = load_item_features(config.data.item_features, config.data.item_col,
                                    config.data.item_feature_columns, vocab)
    model_config = dataclasses.replace(config.model, n_tokens=len(vocab), hash_buckets=vocab.hash_buckets,
                                       feature_cardinalities={t.name: t.cardinality for t in tables},
                                       feature_widths={t.name: t.table.shape[1] for t in tables})
    model = SequenceRecommender(model_config)
    for t in tables:
        model.embeddings.set_feature_table(t.name, torch.from_numpy(t.table))
    model.vocab = vocab
    return model


def run_training(config: RunConfig, events: Optional[EventSource] = None) -> TrainResult:
    """Train and test ``config``'s model; under torchrun on every rank, distributed."""
    with distributed(config.device) as context:
        return _run_training(config, events, context)


def _run_training(config: RunConfig, events: Optional[EventSource], context: DistributedContext) -> TrainResult:
    started = time.perf_counter()
    seed_everything(config.seed)
    set_threads(config.threads)
    device = context.device
    if config.data.shards is not None:  # one writer: rank 0 writes (or checks) the shards, every rank reads them
        shards = on_main(lambda: ensure_shards(events if events is not None else config.data.events, config.data),
                         context)
        vocab, splits = shard_splits(shards)
    else:
        vocab, splits = prepare_data(config, events)
    model = build_model(config, vocab)
    if context.rank:  # dropout: an independent stream on each further rank (rank 0 continues as one process)
        torch.manual_seed(rank_seed(config.seed, context.rank))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters, device %s%s", n_params, device,
             f", rank {context.rank} of {context.world_size}" if context.distributed else "")

    tracking = config.tracking if context.is_main else dataclasses.replace(config.tracking, enabled=False)
    tracker = Tracker(tracking)
    with tracker:
        # params: the config as loaded, with the sizes the data decided (a copy; config is read-only)
        tracker.start(dataclasses.replace(config, model=model.config).flat())
        tracker.log_metrics({"data/n_items": vocab.n_items, "data/n_train_sequences": len(splits.train),
                             "data/n_test_users": len(splits.test), "model/n_parameters": n_params})
        results, step, last = [], 0, None
        for name, stage in (("pretrain", config.pretrain), ("train", config.train)):
            if stage.epochs == 0:
                continue
            start = copy.deepcopy(model.state_dict()) if config.refit else None  # what a refit starts from
            res = train_stage(model, splits, stage, config.eval, name=name, seed=config.seed,
                              data=config.data, device=device,
                              sink=tracker.log_metrics, step_offset=step, context=context)
            step += res.epochs_run
            results.append(res)
            last = (stage, res, start)
        selected: dict[str, float] = {}
        if config.refit and last is not None:  # the last stage again, from its start, on train + val targets
            selected = evaluate_ranking(model, splits.test, config.eval, seed=config.seed, device=device,
                                        context=context)
            stage, res, start = last
            model.load_state_dict(start)
            refit = refit_stage(model, splits, stage, res, config.eval, seed=config.seed, data=config.data,
                                device=device, sink=tracker.log_metrics, step_offset=step, context=context)
            step += refit.epochs_run
            results.append(refit)
        test = evaluate_ranking(model, splits.test, config.eval, seed=config.seed, device=device, context=context)
        summary, model_dir = on_main(lambda: test_and_save(model, vocab, splits.test, test, config, tracker, results,
                                                           step, device, started, selected), context)
    return TrainResult(tracker.run_id, model_dir, summary, results, time.perf_counter() - started, context.is_main)


def test_and_save(model: SequenceRecommender, vocab: ItemVocab, test_seqs, test: dict[str, float],
                  config: RunConfig, tracker: Tracker,
                  results: list[StageResult], step: int, device: torch.device,
                  started: float, selected: Optional[dict[str, float]] = None) -> tuple[dict[str, float], Path]:
    """The trained model's test metrics and layer-fusion weights, logged to ``tracker``, and
    the model directory it was saved to: ``(summary metrics, directory)``. ``selected``: the
    test metrics of the validation-selected model a refit replaced (``test_selected/*``)."""
    weights = fusion_layer_weights(model, test_seqs.inputs, device)
    if weights is not None:
        log.info("learned layer-fusion weights (layer 0 = embeddings): %s", [round(w, 3) for w in weights])
        tracker.log_metrics({f"fusion/layer_{i}_weight": w for i, w in enumerate(weights)}, step)
    test_metrics = {f"test/{k}": v for k, v in test.items()}
    test_metrics.update({f"test_selected/{k}": v for k, v in (selected or {}).items()})
    summary = {**test_metrics, "time/total_seconds": time.perf_counter() - started}
    for r in results:
        summary[f"time/{r.name}_seconds"] = r.seconds
        summary[f"{r.name}/best_epoch"] = r.best_epoch
        if r.train_seconds:
            summary[f"{r.name}/mean_epoch_seconds"] = r.train_seconds / r.epochs_run
    tracker.log_metrics(summary, step)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    model_dir = Path(config.out_dir) / (tracker.run_id or f"run-{stamp}")
    trained = dataclasses.replace(config, model=model.config)  # with the attention training left it in
    extra = {RUN_CONFIG_FILE: json.dumps(trained.to_dict(), indent=2, sort_keys=True) + "\n",
             METRICS_FILE: json.dumps(summary, indent=2, sort_keys=True) + "\n"}
    model.save_pretrained(model_dir, vocab, extra=extra)
    tracker.log_artifacts(model_dir, MODEL_ARTIFACT)
    tracker.log_text(format_metrics(test, config), "test_metrics.md")
    return summary, model_dir


@torch.no_grad()
def fusion_layer_weights(model: SequenceRecommender, seqs, device, n_users: int = 2048) -> Optional[list[float]]:
    """Mean learned fusion weight of each hidden layer over real positions of up
    to ``n_users`` sequences (None unless ``model.fusion == 'learned'``)."""
    if model.config.fusion != "learned" or len(seqs) == 0:
        return None
    model.eval()
    part = seqs.select(np.arange(min(n_users, len(seqs))))
    rows = torch.from_numpy(pad_sequences(part, model.config.max_len, append_mask=not model.causal)).to(device)
    out = model(rows)
    return model.fusion.layer_weights(out.hidden_states, out.padding_mask).cpu().tolist()


def format_metrics(metrics: dict[str, Any], config: RunConfig) -> str:
    """A markdown table: one row per protocol, one column per metric."""
    protocols = [p for p in ("all", "unseen", "sampled") if f"{p}/mrr" in metrics]
    names = [f"{m}@{k}" for k in config.eval.ks for m in ("hr", "ndcg")] + ["mrr"]
    head = f"| protocol | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n"
    rows = "".join(f"| {p}{' (selection)' if p == selection_protocol(config.eval) else ''} | "
                   + " | ".join(f"{metrics[f'{p}/{n}']:.4f}" for n in names) + " |\n" for p in protocols)
    return head + rows + f"\n{int(metrics.get('n_users', 0))} users; protocols: all = ranked against every item, " \
        "unseen = history items removed, sampled = against sampled negatives.\n"

"""Batch job: events parquet -> sequences -> (MLM pretraining) -> training ->
full-ranking test evaluation -> model directory, all tracked in MLflow.

Crash-safe: the training loop checkpoints after every epoch (``checkpoint.*``) under
``{out_dir}/checkpoints/{run}/``; ``run_training(..., resume=find_resume_point(run))``
continues a killed run in the same MLflow run and ends with the weights the uninterrupted
run would have (:mod:`recbert.jobs.resume`). SIGTERM and Ctrl-C end the run as KILLED,
with the checkpoint to resume from in the message.

Under torchrun (``WORLD_SIZE`` > 1) the stages train data-parallel on all ranks, which
validate and test together (each ranks a share of the users); rank 0 alone logs to MLflow
and writes the model directory (and the shards, with ``data.shards``)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
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
from recbert.evaluation.candidates import with_candidates
from recbert.evaluation.ranking import evaluate_ranking, selection_protocol
from recbert.io import exclusive
from recbert.errors import Interrupted
from recbert.jobs.resume import ResumePoint, check_same_config, checkpoint_dir, events_digest, new_run_key
from recbert.model.checkpoint import METRICS_FILE, RUN_CONFIG_FILE
from recbert.model.recommender import SequenceRecommender
from recbert.model.warm_start import warm_start
from recbert.runtime import (DistributedContext, distributed, interruptible, on_main, rank_seed, seed_everything,
                             set_threads)
from recbert.tracking import MODEL_ARTIFACT, Tracker
from recbert.training.checkpoints import Checkpointing, CheckpointStore
from recbert.training.loop import FitResult
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


def run_training(config: RunConfig, events: Optional[EventSource] = None,
                 resume: Optional[ResumePoint] = None) -> TrainResult:
    """Train and test ``config``'s model; under torchrun on every rank, distributed.
    ``resume``: continue the run a checkpoint was written by (:func:`find_resume_point`)."""
    with distributed(config.device) as context:
        # one process continues a run: a second `--resume` of it at the same time is refused
        held = exclusive(resume.path.parent, what="resumed") if resume is not None and context.is_main \
            else contextlib.nullcontext()
        with held:
            return _run_training(config, events, context, resume)


def _run_training(config: RunConfig, events: Optional[EventSource], context: DistributedContext,
                  resume: Optional[ResumePoint]) -> TrainResult:
    started = time.perf_counter()
    seed_everything(config.seed)
    set_threads(config.threads)
    device = context.device
    model: Optional[SequenceRecommender] = None
    if config.init_from is not None:  # the saved model's vocabulary reads the events
        model = warm_start(config.init_from, config.model, config.data.item_features, config.data.item_col,
                           config.data.item_feature_columns)
    given = model.vocab if model is not None else None
    if config.data.shards is not None:  # one writer: rank 0 writes (or checks) the shards, every rank reads them
        source = events if events is not None else config.data.events
        shards = on_main(lambda: ensure_shards(source, config.data, given), context)
        vocab, splits = shard_splits(shards, given)
    else:
        vocab, splits = prepare_data(config, events, vocab=given)
    splits = with_candidates(splits, config.eval.candidates, vocab, config.data.item_col)
    if model is None:
        model = build_model(config, vocab)
    if context.rank:  # dropout: an independent stream on each further rank (rank 0 continues as one process)
        torch.manual_seed(rank_seed(config.seed, context.rank))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters, device %s%s", n_params, device,
             f", rank {context.rank} of {context.world_size}" if context.distributed else "")
    digest = on_main(lambda: events_digest(config, events), context)
    if resume is not None:
        check_same_config(resume.config, config)
        resume.check_events(digest)

    tracking = config.tracking if context.is_main else dataclasses.replace(config.tracking, enabled=False)
    tracker = Tracker(tracking)
    where: dict[str, Any] = {}  # the run's checkpoints, once known: for the message of an interruption
    try:
        with interruptible(), tracker:
            summary, model_dir, results = _tracked_training(config, model, vocab, splits, tracker, context, resume,
                                                            digest, started, where)
    except (KeyboardInterrupt, Interrupted) as exc:
        raise Interrupted(interrupted_message(exc, where), getattr(exc, "exit_code", 130)) from None
    return TrainResult(tracker.run_id, model_dir, summary, results, time.perf_counter() - started, context.is_main)


def _tracked_training(config: RunConfig, model: SequenceRecommender, vocab: ItemVocab, splits, tracker: Tracker,
                      context: DistributedContext, resume: Optional[ResumePoint], digest: Optional[str],
                      started: float, where: dict[str, Any]) -> tuple[dict[str, float], Path, list[StageResult]]:
    """The stages, the refit and the test inside the MLflow run; ``where`` learns the
    run's name and checkpoint store as soon as they exist."""
    device = context.device
    if resume is not None:
        tracker.resume(resume.run_id, resume.path)
    else:  # params: the config as loaded, with the sizes the data decided (a copy; config is read-only)
        tracker.start(dataclasses.replace(config, model=model.config).flat(), run_name=run_name_of(config),
                      tags={"recbert.job": "train", "recbert.data_path": str(config.data.events),
                            "recbert.data_sha256": digest or "in-memory", "recbert.device": str(device)})
        tracker.log_metrics({"data/n_items": vocab.n_items, "data/n_train_sequences": len(splits.train),
                             "data/n_test_users": len(splits.test),
                             "model/n_parameters": sum(p.numel() for p in model.parameters())})
        if digest is not None:
            tracker.log_dataset(config.data.events, dataset_name(config), digest)
    run_key = resume.run_key if resume is not None else tracker.run_id or new_run_key()
    store = CheckpointStore(checkpoint_dir(config, run_key), config.checkpoint.keep_last)
    where.update(run_key=run_key, store=store)
    job = resume.job if resume is not None else {"phase": 0, "step": 0, "results": [], "stage_start": None,
                                                 "selected": {}}
    results = [FitResult(**r) for r in job["results"]]
    step = job["step"]

    def checkpointing(phase: int, start: Optional[dict], selected: dict) -> Optional[Checkpointing]:
        if not config.checkpoint.enabled:
            return None
        done = [dataclasses.asdict(r) for r in results]  # the phases before this one
        at = step

        def save(loop: dict) -> None:
            if context.is_main:
                store.save({"job": {"run_id": tracker.run_id, "run_key": run_key, "events_sha256": digest,
                                    "config": json.dumps(config.to_dict()), "phase": phase, "step": at,
                                    "results": done, "stage_start": start, "selected": selected},
                            "loop": loop})
        return Checkpointing(save, config.checkpoint.every_steps)

    def loop_resume(phase: int) -> Optional[dict]:
        return resume.loop if resume is not None and resume.phase == phase else None

    stages = [(n, s) for n, s in (("pretrain", config.pretrain), ("train", config.train)) if s.epochs > 0]
    last = None
    for phase, (name, stage) in enumerate(stages):
        if resume is not None and phase < resume.phase:  # finished before the checkpoint
            last = (stage, results[phase], None)
            continue
        state = loop_resume(phase)
        start = None  # what a refit starts from
        if config.refit:
            start = job["stage_start"] if state is not None else copy.deepcopy(model.state_dict())
        res = train_stage(model, splits, stage, config.eval, name=name, seed=config.seed,
                          data=config.data, device=device, sink=tracker.log_metrics, step_offset=step,
                          context=context, checkpointing=checkpointing(phase, start, {}), resume=state)
        step += res.epochs_run
        results.append(res)
        last = (stage, res, start)
    selected: dict[str, float] = {}
    if config.refit and last is not None:  # the last stage again, from its start, on train + val targets
        phase, (stage, res, start) = len(stages), last
        state = loop_resume(phase)
        if state is not None:  # the refit's checkpoint holds its weights and the selected model's metrics
            selected = job["selected"]
        else:
            selected = evaluate_ranking(model, splits.test, config.eval, seed=config.seed, device=device,
                                        context=context)
            model.load_state_dict(start)
        refit = refit_stage(model, splits, stage, res, config.eval, seed=config.seed, data=config.data,
                            device=device, sink=tracker.log_metrics, step_offset=step, context=context,
                            checkpointing=checkpointing(phase, None, selected), resume=state)
        step += refit.epochs_run
        results.append(refit)
    test = evaluate_ranking(model, splits.test, config.eval, seed=config.seed, device=device, context=context)
    summary, model_dir = on_main(lambda: test_and_save(model, vocab, splits.test, test, config, tracker, results,
                                                       step, device, started, selected, run_key), context)
    if context.is_main and not config.checkpoint.keep_when_finished:  # finished: nothing left to resume
        shutil.rmtree(store.directory, ignore_errors=True)
    return summary, model_dir, results


def dataset_name(config: RunConfig) -> str:
    """The name of the run's events: :func:`events_name` of ``data.events``."""
    return events_name(config.data.events)


def events_name(events: str | Path) -> str:
    """An events file's stem, or its folder's name for a file called events.parquet."""
    path = Path(str(events))
    return (path.parent.name if path.stem == "events" and path.parent.name else path.stem) or "events"


def run_name_of(config: RunConfig) -> str:
    """``<dataset>-<objectives>``, e.g. ``beauty-mlm_attributes-next_item``."""
    objectives = [s.objective for s in (config.pretrain, config.train) if s.epochs > 0]
    return "-".join([dataset_name(config), *objectives])


def interrupted_message(exc: BaseException, where: dict[str, Any]) -> str:
    """One line for a stopped training: what stopped it and how to continue."""
    what = str(exc) if isinstance(exc, Interrupted) else "interrupted (Ctrl-C)"
    store = where.get("store")
    files = store.files() if store is not None else []
    if not files:
        return f"{what}: training stopped before its first checkpoint"
    return (f"{what}: training stopped; its newest checkpoint is {files[-1]}: continue with "
            f"`recbert train --resume {store.directory}`")


def test_and_save(model: SequenceRecommender, vocab: ItemVocab, test_seqs, test: dict[str, float],
                  config: RunConfig, tracker: Tracker,
                  results: list[StageResult], step: int, device: torch.device,
                  started: float, selected: Optional[dict[str, float]] = None,
                  run_key: Optional[str] = None) -> tuple[dict[str, float], Path]:
    """The trained model's test metrics and layer-fusion weights, logged to ``tracker``, and
    the model directory it was saved to: ``(summary metrics, directory)``. ``selected``: the
    test metrics of the validation-selected model a refit replaced (``test_selected/*``)."""
    weights = fusion_layer_weights(model, test_seqs.inputs, device)
    if weights is not None:
        log.info("learned layer-fusion weights (layer 0 = embeddings): %s", [round(w, 3) for w in weights])
        tracker.log_metrics({f"fusion/layer_{i}_weight": w for i, w in enumerate(weights)}, step)
    if tracker.run_id is not None:  # pictures: the curves of every stage, the fusion weights
        from recbert.evaluation.plots import fusion_weights_chart, training_curves  # matplotlib: only here

        select = f"val/{selection_protocol(config.eval)}/{config.eval.select_metric}"
        tracker.log_figure(training_curves([(r.name, r.history) for r in results], select), "plots/training.png")
        if weights is not None:
            tracker.log_figure(fusion_weights_chart(weights), "plots/fusion_weights.png")
    test_metrics = {f"test/{k}": v for k, v in test.items()}
    test_metrics.update({f"test_selected/{k}": v for k, v in (selected or {}).items()})
    summary = {**test_metrics, "time/total_seconds": time.perf_counter() - started}
    for r in results:
        summary[f"time/{r.name}_seconds"] = r.seconds
        summary[f"{r.name}/best_epoch"] = r.best_epoch
        if math.isfinite(r.best_score):  # what selection saw: `recbert runs compare` reads it
            summary[f"{r.name}/best_score"] = r.best_score
        if r.train_seconds:
            summary[f"{r.name}/mean_epoch_seconds"] = r.train_seconds / r.epochs_run
    tracker.log_metrics(summary, step)

    model_dir = Path(config.out_dir) / (run_key or tracker.run_id or new_run_key())
    trained = dataclasses.replace(config, model=model.config)  # with the attention training left it in
    extra = {RUN_CONFIG_FILE: json.dumps(trained.to_dict(), indent=2, sort_keys=True) + "\n",
             METRICS_FILE: json.dumps(summary, indent=2, sort_keys=True) + "\n"}
    model.save_pretrained(model_dir, vocab, extra=extra)
    if tracker.run_id is not None:  # the MLflow model: pyfunc, signature, input example (and a registry version)
        from recbert.exports.mlflow_model import save_mlflow_model  # imports MLflow's model code: only here

        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifacts(save_mlflow_model(model_dir, Path(tmp) / MODEL_ARTIFACT), MODEL_ARTIFACT)
        if config.tracking.register_as:
            version = tracker.register_model(config.tracking.register_as, describe_metrics(test_metrics))
            log.info("registered as %s version %s", config.tracking.register_as, version)
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


def describe_metrics(metrics: dict[str, float]) -> str:
    """The test metrics of a registered model version, one ``key: value`` per line."""
    lines = [f"{k}: {int(v)}" if k.endswith("n_users") else f"{k}: {v:.4f}" for k, v in sorted(metrics.items())]
    return "test metrics of the training run:\n" + "\n".join(lines)


def format_metrics(metrics: dict[str, Any], config: RunConfig) -> str:
    """A markdown table: one row per protocol, one column per metric."""
    protocols = [p for p in ("all", "unseen", "sampled") if f"{p}/mrr" in metrics]
    names = [f"{m}@{k}" for k in config.eval.ks for m in ("hr", "ndcg")] + ["mrr"]
    head = f"| protocol | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n"
    rows = "".join(f"| {p}{' (selection)' if p == selection_protocol(config.eval) else ''} | "
                   + " | ".join(f"{metrics[f'{p}/{n}']:.4f}" for n in names) + " |\n" for p in protocols)
    items = "every item" if config.eval.candidates is None else f"every candidate item ({config.eval.candidates})"
    return head + rows + f"\n{int(metrics.get('n_users', 0))} users; protocols: all = ranked against {items}, " \
        "unseen = history items removed, sampled = against sampled negatives.\n"

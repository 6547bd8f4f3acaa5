"""Fine-tuning experiments on MovieLens-100K: user classification (gender / age / occupation)
and CTR, from a pretrained model directory or from scratch, with scikit-learn baselines.

* ``run_classification(model_dir, task, config)``: stratified K-fold over users (repeated for
  every seed in ``experiment.seeds``); each fold trains a SequenceClassifier per variant
  ('pretrained': the saved encoder; 'scratch': a fresh SequenceRecommender with the same
  ModelConfig and vocabulary) and a LogisticRegression on TF-IDF bag-of-items of the same
  history window. Early stopping on a validation slice of the training fold (stratified,
  ``experiment.val_fraction``) by validation log-loss. Metrics on the held-out fold:
  accuracy, macro-F1, micro-F1, log-loss and AUC (binary AUC; for multi-class the macro
  one-vs-rest AUC over the classes present in the fold).
* ``run_ctr(model_dir, config)``: the time-ordered per-user split of
  :func:`recbert.data.tasks.build_ctr_task`; a CTRModel per variant (early stopping on
  validation AUC) and a LogisticRegression on the three history features. Metrics on the
  test split: AUC, log-loss, accuracy. Repeated for every seed.

Test metrics are also recorded after every fine-tuning epoch (``curve``: index 0 = before
fine-tuning), so "metric after 1 vs 5 epochs" can be read from one run. Everything is tracked
in MLflow: one parent run per call and a child run (tag ``mlflow.parentRunId``) per
(variant, seed, fold).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from recbert.config import ModelConfig, RunConfig, TrackingConfig, load_config
from recbert.data.tasks import CTR_FEATURES, USER_TASKS, CTRSplit, UserTask, build_ctr_task, build_user_task
from recbert.data.vocab import PAD
from recbert.errors import ConfigError
from recbert.evaluation.classification import (CLASSIFICATION_METRICS, CTR_METRICS, classification_metrics,
                                               ctr_metrics)
from recbert.heads.classification import HeadConfig, SequenceClassifier
from recbert.heads.ctr import CTRConfig, CTRModel
from recbert.evaluation.report import fmt, mean_std, results_table
from recbert.heads.backbones import VARIANTS, Backbones
from recbert.heads.finetune import FinetuneConfig, finetune
from recbert.runtime import resolve_device, set_threads
from recbert.tracking import Tracker

log = logging.getLogger("recbert.finetune")



@dataclass(frozen=True)
class ExperimentConfig:
    """Data and protocol of a fine-tuning experiment."""

    events: str = "data/ml-100k/events.parquet"
    users: str = "data/ml-100k/users.parquet"
    label_column: Optional[str] = None  # task 'label': the users table's categorical column to predict
    items: str = "data/ml-100k/items.parquet"
    epochs: int = 5
    batch_size: int = 64
    folds: int = 3  # classification: StratifiedKFold splits
    seeds: list[int] = field(default_factory=lambda: [0])  # repeats (fold split, init, batch order)
    val_fraction: float = 0.1  # classification: share of a training fold; ctr: share of each user's train events
    test_fraction: float = 0.2  # ctr: last share of each user's events
    rating_threshold: int = 4  # ctr: click = rating >= threshold
    max_len: Optional[int] = None  # history window (None: the model's max_len)
    max_train_samples: Optional[int] = None  # ctr: random subsample of the training samples
    max_val_samples: Optional[int] = None  # ctr: random subsample of the validation samples
    max_test_samples: Optional[int] = None  # ctr: random subsample of the test samples
    baselines: bool = True
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("experiment.epochs must be >= 0 and experiment.batch_size >= 1")
        if self.folds < 2:
            raise ConfigError(f"experiment.folds must be >= 2, got {self.folds}")
        if not self.seeds:
            raise ConfigError("experiment.seeds must name at least one seed")
        if not 0.0 < self.val_fraction < 0.5 or not 0.0 < self.test_fraction < 0.5:
            raise ConfigError("experiment.val_fraction and experiment.test_fraction must be in (0, 0.5)")
        for name in ("max_len", "max_train_samples", "max_val_samples", "max_test_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"experiment.{name} must be >= 1 (or unset), got {v}")


@dataclass(frozen=True)
class FinetuneRunConfig:
    """Everything a `recbert finetune` run needs. ``model`` is used only for a scratch model
    without a model directory (otherwise the directory's config is used)."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    ctr: CTRConfig = field(default_factory=CTRConfig)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(patience=100))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="recbert-finetune"))
    threads: Optional[int] = None
    device: str = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...

    def flat(self) -> dict[str, Any]:
        return RunConfig.flat(self)  # the walk only needs dataclass fields

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "FinetuneRunConfig":
        return load_config(cls, path, overrides)


@dataclass
class ExperimentResult:
    task: str
    run_id: Optional[str]
    # variant -> one dict of test metrics per (seed, fold)
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # variant -> per (seed, fold) list of per-epoch test metric dicts (index 0 = before training)
    curves: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """variant -> metric -> (mean, std) over seeds x folds."""
        return {v: mean_std(rows) for v, rows in self.runs.items()}

    def curve_summary(self, metric: str, epochs: Sequence[int]) -> dict[str, dict[int, tuple[float, float]]]:
        """variant -> epoch -> (mean, std) of the test ``metric`` after that many epochs
        (runs that stopped earlier are left out of that epoch)."""
        out = {}
        for v, curves in self.curves.items():
            out[v] = {}
            for e in epochs:
                vals = [c[e][metric] for c in curves if len(c) > e]
                if vals:
                    out[v][e] = (float(np.mean(vals)), float(np.std(vals)))
        return out

    def table(self, metrics: Sequence[str], curve_metric: Optional[str] = None,
              curve_epochs: Sequence[int] = (1, 5)) -> str:
        extra = {}
        if curve_metric:
            curve = self.curve_summary(curve_metric, curve_epochs)
            extra = {f"{curve_metric} after {e} ep": {v: fmt(curve.get(v, {}).get(e)) for v in self.curves}
                     for e in curve_epochs}
        return results_table("variant", self.runs, metrics, extra)


def _trim(rows: np.ndarray) -> torch.Tensor:
    """Drop leading columns that are padding in every row (left-padded rows)."""
    real = (rows != PAD).any(0)
    first = int(real.argmax()) if real.any() else rows.shape[1] - 1
    return torch.from_numpy(np.ascontiguousarray(rows[:, first:]))


def _batches(arrays: Sequence[np.ndarray], batch_size: int, seed: int) -> Callable[[int], Any]:
    n = len(arrays[0])

    def fn(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield (_trim(arrays[0][idx]), *(torch.from_numpy(a[idx]) for a in arrays[1:]))

    return fn


def _fit(model: torch.nn.Module, arrays: Sequence[np.ndarray], val_fn: Callable, cfg: FinetuneConfig,
         exp: ExperimentConfig, seed: int, higher_is_better: bool, device: torch.device):
    """``finetune`` on shuffled batches of ``arrays`` (history rows first, labels last)."""
    steps = math.ceil(len(arrays[0]) / exp.batch_size)
    return finetune(model, _batches(arrays, exp.batch_size, seed), val_fn, dataclasses.replace(cfg, seed=seed),
                    exp.epochs, higher_is_better=higher_is_better, device=device, steps_per_epoch=steps)


def _stratified_split(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """(train, validation) positions of ``idx``, stratified by ``labels`` when every class
    is frequent enough, else a plain seeded split."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class too rare to stratify the validation slice
        return train_test_split(idx, test_size=fraction, random_state=seed)


@torch.no_grad()
def _predict(fn: Callable[..., torch.Tensor], arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    outs = []
    device = next(fn.parameters()).device
    for i in range(0, len(arrays[0]), batch_size):
        sl = slice(i, i + batch_size)
        inputs = (_trim(arrays[0][sl]), *(torch.from_numpy(a[sl]) for a in arrays[1:]))
        outs.append(fn(*(x.to(device) for x in inputs)).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros(0)


def _variants(variants: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(variants))
    bad = [v for v in out if v not in VARIANTS]
    if bad or not out:
        raise ConfigError(f"variants must be among {list(VARIANTS)}, got {list(variants)}")
    return out


def _setup(config: FinetuneRunConfig) -> torch.device:
    set_threads(config.threads)
    return resolve_device(config.device)


def _window(config: FinetuneRunConfig, model_config: ModelConfig) -> int:
    w = config.experiment.max_len or model_config.max_len
    if w > model_config.max_len:
        raise ConfigError(f"experiment.max_len={w} exceeds the model's max_len={model_config.max_len}")
    return w


# -- classification ---------------------------------------------------------------------------
def bag_of_items(rows: np.ndarray, n_tokens: int):
    """``[len(rows), n_tokens]`` sparse counts of each row's tokens (padding left out)."""
    from scipy.sparse import csr_matrix

    r, c = np.nonzero(rows != PAD)
    return csr_matrix((np.ones(len(r)), (r, rows[r, c])), shape=(len(rows), n_tokens))


def tfidf_baseline(task: UserTask, train_idx: np.ndarray, test_idx: np.ndarray, n_tokens: int,
                   seed: int) -> np.ndarray:
    """LogisticRegression on TF-IDF bag-of-items of the same rows; test probabilities."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    counts = bag_of_items(task.rows, n_tokens)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts[train_idx])
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(tfidf.transform(counts[train_idx]), task.labels[train_idx])
    proba = np.zeros((len(test_idx), task.n_classes))
    proba[:, clf.classes_] = clf.predict_proba(tfidf.transform(counts[test_idx]))
    return proba[:, 1] if task.binary else proba


def run_classification(model_dir: Optional[str | Path], task: str, config: FinetuneRunConfig,
                       variants: Sequence[str] = ("pretrained",), parent_run_id: Optional[str] = None,
                       run_name: Optional[str] = None, save_dir: Optional[str | Path] = None) -> ExperimentResult:
    """K-fold user classification (see the module docstring). With ``save_dir``, one more
    model of the first variant is fine-tuned on every user (a stratified validation slice
    for early stopping) and saved there with its task, classes and the CV metrics."""
    from sklearn.model_selection import StratifiedKFold

    if task not in USER_TASKS:
        raise ConfigError(f"classification task must be one of {list(USER_TASKS)}, got {task!r}")
    started = time.perf_counter()
    device = _setup(config)
    exp = config.experiment
    variants = _variants(variants)
    backbones = Backbones(model_dir, config.model, exp.events)
    data = build_user_task(task, exp.events, exp.users, backbones.vocab, _window(config, backbones.config),
                           label_column=exp.label_column)
    head_cfg = dataclasses.replace(config.head, task="binary" if data.binary else "multiclass",
                                   n_classes=data.n_classes,
                                   aux_head=config.head.aux_head or config.finetune.aux == "head")
    if head_cfg.class_weights is not None and len(head_cfg.class_weights) != data.n_classes:
        raise ConfigError(f"head.class_weights needs {data.n_classes} entries for task {task}")
    labels_t = data.labels.astype(np.float32) if data.binary else data.labels
    min_class = int(np.bincount(data.labels, minlength=data.n_classes).min())
    if exp.folds > max(min_class, 2):
        log.warning("the rarest %s class has %d users: fewer than experiment.folds=%d", task, min_class, exp.folds)
    result = ExperimentResult(task, None, info={"users": len(data), "classes": data.classes,
                                                "window": data.rows.shape[1]})

    def proba(m: SequenceClassifier, idx: np.ndarray) -> np.ndarray:
        logits = _predict(m, [data.rows[idx]], exp.eval_batch_size)
        return 1 / (1 + np.exp(-logits)) if data.binary else _softmax(logits)

    def metrics(m: SequenceClassifier, idx: np.ndarray) -> dict[str, float]:
        return classification_metrics(data.labels[idx], proba(m, idx), data.n_classes)

    parent = Tracker(config.tracking, parent_run_id=parent_run_id)
    with parent:
        parent.start({**config.flat(), "task": task, "model_dir": str(model_dir), "variants": ",".join(variants)},
                     run_name=run_name or f"finetune-{task}")
        for seed in exp.seeds:
            skf = StratifiedKFold(n_splits=exp.folds, shuffle=True, random_state=seed)
            for fold, (trval, test) in enumerate(skf.split(data.rows, data.labels)):
                train, val = _stratified_split(trval, data.labels[trval], exp.val_fraction, seed)
                tag = {"seed": seed, "fold": fold}
                if exp.baselines:
                    m = classification_metrics(data.labels[test], tfidf_baseline(
                        data, trval, test, backbones.config.n_tokens, seed), data.n_classes)
                    result.runs.setdefault("tfidf_logreg", []).append(m)
                    _child(config.tracking, parent.run_id, f"tfidf_logreg s{seed} f{fold}",
                           {**tag, "variant": "tfidf_logreg"}, m)
                for variant in variants:
                    model = SequenceClassifier(backbones.make(variant, seed * 1000 + fold), head_cfg)
                    curve: list[dict[str, float]] = []

                    def val_fn(m: SequenceClassifier) -> float:
                        curve.append(metrics(m, test))
                        return metrics(m, val)["log_loss"]

                    res = _fit(model, [data.rows[train], labels_t[train]], val_fn, config.finetune, exp,
                               seed * 1000 + fold, higher_is_better=False, device=device)
                    m = metrics(model, test)
                    m["best_epoch"] = res.best_epoch
                    result.runs.setdefault(variant, []).append(m)
                    result.curves.setdefault(variant, []).append(curve)
                    _child(config.tracking, parent.run_id, f"{variant} s{seed} f{fold}",
                           {**tag, "variant": variant}, m, curve, res.history)
                    log.info("%s %s seed %d fold %d: %s", task, variant, seed, fold,
                             {k: round(v, 4) for k, v in m.items()})
        result.run_id = parent.run_id
        _log_summary(parent, result, CLASSIFICATION_METRICS, "auc" if data.binary else "accuracy")
        if save_dir is not None:
            seed = exp.seeds[0]
            train, val = _stratified_split(np.arange(len(data)), data.labels, exp.val_fraction, seed)
            model = SequenceClassifier(backbones.make(variants[0], seed), head_cfg)
            res = _fit(model, [data.rows[train], labels_t[train]], lambda m: metrics(m, val)["log_loss"],
                       config.finetune, exp, seed, higher_is_better=False, device=device)
            cv = {k: round(v[0], 6) for k, v in result.summary()[variants[0]].items() if math.isfinite(v[0])}
            model.metadata = {"task": task, "label_column": exp.label_column if task == "label" else None,
                              "classes": list(data.classes), "window": int(data.rows.shape[1]),
                              "variant": variants[0], "source_model_dir": str(model_dir) if model_dir else None,
                              "cv_metrics": cv, "val_log_loss": round(res.best_score, 6),
                              "mlflow_run_id": parent.run_id}
            _save(model, save_dir, parent)
        result.seconds = time.perf_counter() - started
    return result


def _save(model: Any, save_dir: str | Path, tracker: Tracker) -> None:
    model.save_pretrained(save_dir)
    log.info("saved the fine-tuned %s head to %s", model.kind, save_dir)
    if tracker.run_id is not None:  # as an MLflow model (pyfunc: probabilities / click probability)
        from recbert.exports.mlflow_model import save_head_mlflow_model  # MLflow's model code: only here

        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifacts(save_head_mlflow_model(save_dir, Path(tmp) / "head_model"), "head_model")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _child(tracking: TrackingConfig, parent_id: Optional[str], name: str, params: dict,
           metrics: dict[str, float], curve: Optional[list[dict]] = None, history: Optional[list[dict]] = None) -> None:
    if parent_id is None:
        return
    child = Tracker(tracking, parent_run_id=parent_id)
    with child:
        child.start(params, run_name=name)
        child.log_metrics({f"test/{k}": v for k, v in metrics.items() if math.isfinite(v)})
        for step, row in enumerate(curve or []):
            child.log_metrics({f"curve/{k}": v for k, v in row.items() if math.isfinite(v)}, step)
        for epoch, row in enumerate(history or [], 1):
            child.log_metrics({k: v for k, v in row.items() if math.isfinite(v)}, epoch)


def _log_summary(parent: Tracker, result: ExperimentResult, metrics: Sequence[str], curve_metric: str) -> None:
    for variant, stats in result.summary().items():
        parent.log_metrics({f"{variant}/{k}_{s}": v for k, (mean, std) in stats.items()
                            for s, v in (("mean", mean), ("std", std)) if math.isfinite(v)})
    epochs = [e for e in (1, 5) if any(len(c) > e for cs in result.curves.values() for c in cs)]
    result.info["table"] = result.table(metrics, curve_metric, epochs)
    parent.log_text(result.info["table"], f"{result.task}_results.md")


# -- CTR ---------------------------------------------------------------------------------------
def _sample(split: CTRSplit, n: Optional[int], seed: int) -> CTRSplit:
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    return split.subset(idx)


def _standardised_features(train: CTRSplit, *others: CTRSplit) -> dict[int, np.ndarray]:
    """The dense task features of each split as float32, standardised with the training
    split's mean and std (the CTR model's context input); keyed by ``id(split)``."""
    mean, std = train.features.mean(0), train.features.std(0)
    std = np.where(std > 0, std, 1.0)
    return {id(s): ((s.features - mean) / std).astype(np.float32) for s in (train, *others)}


def feature_baseline(train: CTRSplit, test: CTRSplit, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit(train.features, train.labels.astype(np.int64))
    return clf.predict_proba(test.features)[:, 1]


def run_ctr(model_dir: Optional[str | Path], config: FinetuneRunConfig, variants: Sequence[str] = ("pretrained",),
            parent_run_id: Optional[str] = None, run_name: Optional[str] = None,
            save_dir: Optional[str | Path] = None) -> ExperimentResult:
    """CTR fine-tuning on the per-user time split (see the module docstring). With
    ``save_dir``, the first variant's model of the first seed (early-stopped on the
    validation split) is saved there with its test metrics."""
    started = time.perf_counter()
    device = _setup(config)
    exp = config.experiment
    variants = _variants(variants)
    if config.ctr.n_context not in (0, len(CTR_FEATURES)):
        raise ConfigError(f"ctr.n_context must be 0 (the item sequence only) or {len(CTR_FEATURES)} (also the "
                          f"task's dense features {list(CTR_FEATURES)}, standardised), got {config.ctr.n_context}")
    if config.ctr.n_context and save_dir is not None:
        raise ConfigError("a CTR head with context features (ctr.n_context > 0) cannot be saved for `recbert "
                          "predict`, which scores (user, item) pairs without them; set ctr.n_context=0")
    backbones = Backbones(model_dir, config.model, exp.events)
    task = build_ctr_task(exp.events, backbones.vocab, _window(config, backbones.config),
                          items=exp.items if exp.items and Path(exp.items).is_file() else None,
                          threshold=exp.rating_threshold, test_fraction=exp.test_fraction,
                          val_fraction=exp.val_fraction)
    ctr_cfg = dataclasses.replace(config.ctr, aux_head=config.ctr.aux_head or config.finetune.aux == "head")
    result = ExperimentResult("ctr", None, info=dict(task.info))
    parent = Tracker(config.tracking, parent_run_id=parent_run_id)
    with parent:
        parent.start({**config.flat(), "task": "ctr", "model_dir": str(model_dir), "variants": ",".join(variants)},
                     run_name=run_name or "finetune-ctr")
        parent.log_metrics({f"data/{k}": v for k, v in task.info.items()})
        for seed in exp.seeds:
            train = _sample(task.train, exp.max_train_samples, seed)
            val = _sample(task.val, exp.max_val_samples, seed + 1)
            test = _sample(task.test, exp.max_test_samples, seed + 2)
            context = _standardised_features(train, val, test) if config.ctr.n_context else {}
            if exp.baselines:
                m = ctr_metrics(test.labels, feature_baseline(train, test, seed))
                result.runs.setdefault("features_logreg", []).append(m)
                _child(config.tracking, parent.run_id, f"features_logreg s{seed}",
                       {"seed": seed, "variant": "features_logreg"}, m)
            for variant in variants:
                model = CTRModel(backbones.make(variant, seed), ctr_cfg)
                curve: list[dict[str, float]] = []

                def proba(m: CTRModel, s: CTRSplit) -> np.ndarray:
                    extra = [context[id(s)]] if context else []
                    logits = _predict(m, [s.rows, s.candidates, *extra], exp.eval_batch_size)
                    return 1 / (1 + np.exp(-logits))

                def val_fn(m: CTRModel) -> float:
                    curve.append(ctr_metrics(test.labels, proba(m, test)))
                    return ctr_metrics(val.labels, proba(m, val))["auc"]

                arrays = [train.rows, train.candidates, *([context[id(train)]] if context else []), train.labels]
                res = _fit(model, arrays, val_fn, config.finetune, exp, seed, higher_is_better=True, device=device)
                m = ctr_metrics(test.labels, proba(model, test))
                m["best_epoch"] = res.best_epoch
                result.runs.setdefault(variant, []).append(m)
                result.curves.setdefault(variant, []).append(curve)
                _child(config.tracking, parent.run_id, f"{variant} s{seed}", {"seed": seed, "variant": variant},
                       m, curve, res.history)
                log.info("ctr %s seed %d: %s", variant, seed, {k: round(v, 4) for k, v in m.items()})
                if save_dir is not None and seed == exp.seeds[0] and variant == variants[0]:
                    model.metadata = {"task": "ctr", "window": int(train.rows.shape[1]), "variant": variant,
                                      "seed": seed, "threshold": exp.rating_threshold,
                                      "source_model_dir": str(model_dir) if model_dir else None,
                                      "test_metrics": {k: round(v, 6) for k, v in m.items() if math.isfinite(v)},
                                      "mlflow_run_id": parent.run_id}
                    _save(model, save_dir, parent)
        result.run_id = parent.run_id
        result.seconds = time.perf_counter() - started
        _log_summary(parent, result, CTR_METRICS, "auc")
    return result


def run_task(model_dir: Optional[str | Path], task: str, config: FinetuneRunConfig,
             variants: Sequence[str] = ("pretrained",), parent_run_id: Optional[str] = None,
             run_name: Optional[str] = None, save_dir: Optional[str | Path] = None) -> ExperimentResult:
    if task == "ctr":
        return run_ctr(model_dir, config, variants, parent_run_id, run_name, save_dir)
    return run_classification(model_dir, task, config, variants, parent_run_id, run_name, save_dir)


def metric_names(task: str) -> tuple[str, ...]:
    return CTR_METRICS if task == "ctr" else CLASSIFICATION_METRICS


__all__ = ["ExperimentConfig", "ExperimentResult", "FinetuneRunConfig", "metric_names", "run_classification",
           "run_ctr", "run_task"]

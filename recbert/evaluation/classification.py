"""Metrics of the task heads on held-out users or (user, item) pairs, from predicted
probabilities: accuracy, macro/micro F1, log-loss and ROC AUC (scikit-learn; tied
scores count one half in the AUC). Non-finite probabilities are an error
(:class:`~recbert.errors.DivergenceError`), never a score."""

from __future__ import annotations

import math

import numpy as np

from recbert.finite import require_finite

CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "f1_micro", "auc", "log_loss")
CTR_METRICS = ("auc", "log_loss", "accuracy")


def classification_metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """``proba``: ``[N]`` P(class 1) for binary tasks, else ``[N, C]``."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    y = np.asarray(y).astype(np.int64)
    p = np.asarray(proba, dtype=np.float64)
    require_finite(p, "model probabilities")
    if p.ndim == 1:
        p = np.stack([1 - p, p], axis=1)
    p = np.clip(p, 1e-7, 1.0)
    p = p / p.sum(1, keepdims=True)
    pred = p.argmax(1)
    out = {"accuracy": float(accuracy_score(y, pred)),
           "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
           "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
           "log_loss": float(log_loss(y, p, labels=list(range(n_classes))))}
    if n_classes == 2:
        out["auc"] = float(roc_auc_score(y, p[:, 1])) if len(np.unique(y)) == 2 else math.nan
    else:
        aucs = [roc_auc_score(y == c, p[:, c]) for c in range(n_classes) if 0 < (y == c).sum() < len(y)]
        out["auc"] = float(np.mean(aucs)) if aucs else math.nan
    return out


def ctr_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(y).astype(np.int64)
    require_finite(p, "model probabilities")
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan,
            "log_loss": float(log_loss(y, p, labels=[0, 1])),
            "accuracy": float(((p > 0.5) == (y > 0)).mean())}

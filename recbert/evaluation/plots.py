"""Pictures of results, for where people look rather than read (MLflow run artifacts,
benchmark reports): training and validation curves per epoch, the learned layer-fusion
weights, a results table as bars with error bars, and a recall-vs-QPS curve. Each
function returns a matplotlib Figure drawn with the Agg backend (no display needed);
:func:`save_figure` writes one atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from recbert.evaluation.report import mean_std
from recbert.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: Sequence[tuple[str, Sequence[Mapping[str, float]]]],
                    select_key: Optional[str] = None):
    """Per-epoch training loss of each stage (left) and the validation metrics (right;
    ``select_key`` is the selection metric, drawn bold), on one x axis of epochs counted
    across the stages. ``histories``: ``(stage name, per-epoch records)`` in order, the
    records as :func:`recbert.training.loop.fit` writes them."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    val_keys: list[str] = []
    for name, history in histories:
        epochs = [offset + i + 1 for i in range(len(history))]
        loss = [r.get(f"{name}/loss", math.nan) for r in history]
        left.plot(epochs, loss, marker=".", label=name)
        protocol = select_key.rsplit("/", 1)[0] + "/" if select_key else "val/"  # the selection's protocol
        for key in sorted({k for r in history for k in r if k.startswith(protocol) and ("@10" in k or k == select_key)}):
            points = [(e, r[key]) for e, r in zip(epochs, history) if key in r]
            if points:
                style = {"linewidth": 2.5} if key == select_key else {"linewidth": 1, "alpha": 0.7}
                right.plot(*zip(*points), marker=".", label=f"{name} {key}" if len(histories) > 1 else key, **style)
                val_keys.append(key)
        if offset:
            for ax in (left, right):
                ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
        offset = epochs[-1] if epochs else offset
    left.set(title="training loss per epoch", xlabel="epoch (all stages)", ylabel="loss")
    right.set(title="validation", xlabel="epoch (all stages)", ylabel="metric")
    left.legend(fontsize=8)
    if val_keys:
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "no validation", ha="center", va="center", transform=right.transAxes)
    fig.tight_layout()
    return fig


def fusion_weights_chart(weights: Sequence[float]):
    """The learned layer-fusion weights as bars (layer 0 = the embeddings)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(weights) + 2), 3.5))
    ax.bar(range(len(weights)), weights, color="tab:blue")
    ax.set(title="learned layer-fusion weights", xlabel="layer (0 = embeddings)", ylabel="mean weight",
           xticks=range(len(weights)))
    for i, w in enumerate(weights):
        ax.text(i, w, f"{w:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def results_chart(label: str, runs: Mapping[str, Sequence[Mapping[str, float]]], metrics: Sequence[str],
                  names: Optional[Sequence[str]] = None):
    """A results table as grouped bars, one group per metric and one bar per variant:
    the mean over runs with a sample-std error bar (a variant without a metric is left out)."""
    plt = _pyplot()
    names = list(names) if names is not None else list(runs)
    stats = {n: mean_std(runs.get(n, [])) for n in names}
    metrics = [m for m in metrics if any(m in stats[n] and math.isfinite(stats[n][m][0]) for n in names)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * max(1, len(names)) / 3 + 3), 4))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        xs, means, stds = [], [], []
        for j, m in enumerate(metrics):
            mean, std = stats[n].get(m, (math.nan, math.nan))
            if math.isfinite(mean):
                xs.append(j - 0.4 + width * (i + 0.5))
                means.append(mean)
                stds.append(std if math.isfinite(std) else 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=n)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set(title=f"{label}: mean ± std", ylabel="value")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def recall_qps_curve(points: Sequence[Mapping[str, object]], target_recall: Optional[float] = None,
                     exact_qps: Optional[float] = None):
    """Recall against queries per second (log scale), one line per index family through
    its points in the order given (``points``: dicts with ``family``, ``recall``, ``qps``
    and an optional ``label``, e.g. the swept parameter);
    the target recall and the exact index's QPS as guide lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families: dict[str, list[Mapping[str, object]]] = {}
    for p in points:
        families.setdefault(str(p["family"]), []).append(p)
    for family, ps in families.items():  # in the order given: a sweep's parameter order
        ax.plot([float(p["qps"]) for p in ps], [float(p["recall"]) for p in ps], marker="o", label=family)
        for p in ps:
            if p.get("label"):
                ax.annotate(str(p["label"]), (float(p["qps"]), float(p["recall"])), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
    if target_recall is not None:
        ax.axhline(target_recall, color="grey", linestyle="--", linewidth=1, label=f"recall {target_recall}")
    if exact_qps is not None:
        ax.axvline(exact_qps, color="black", linestyle=":", linewidth=1, label="exact")
    ax.set_xscale("log")
    ax.set(title="recall@k vs batch queries per second", xlabel="queries per second (log)", ylabel="recall@k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)

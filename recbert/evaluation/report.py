"""Experiment reporting: mean ± std of per-run metrics and the markdown tables that
fine-tuning experiments and ablations print and log to MLflow. One aggregation for
every caller: NaN values (a metric undefined for a run, e.g. AUC with one class in a
fold) are left out of that metric's mean and std."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

Stat = tuple[float, float]  # (mean, std)


def mean_std(rows: Sequence[Mapping[str, float]]) -> dict[str, Stat]:
    """metric -> (mean, population std) over ``rows``, finite values only; (nan, nan)
    for a metric with none."""
    out = {}
    for k in sorted({k for r in rows for k in r}):
        vals = np.array([r[k] for r in rows if k in r and math.isfinite(r[k])], dtype=np.float64)
        out[k] = (float(vals.mean()), float(vals.std())) if len(vals) else (math.nan, math.nan)
    return out


def fmt(stat: Optional[Stat]) -> str:
    """``'0.7071 ± 0.0123'``, or ``'n/a'`` for a missing or undefined statistic."""
    if stat is None or not math.isfinite(stat[0]):
        return "n/a"
    return f"{stat[0]:.4f} ± {stat[1]:.4f}"


def results_table(label: str, runs: Mapping[str, Sequence[Mapping[str, float]]], metrics: Sequence[str],
                  extra: Optional[Mapping[str, Mapping[str, str]]] = None,
                  names: Optional[Sequence[str]] = None) -> str:
    """A markdown table: one row per group of runs (``names`` order, default ``runs``'
    order) with the number of runs and mean ± std of each metric; ``extra`` adds columns
    (column -> group -> ready-made cell)."""
    extra = extra or {}
    cols = list(metrics) + list(extra)
    head = f"| {label} | n | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols) + "\n"
    body = ""
    for name in (names if names is not None else list(runs)):
        rows = runs.get(name, [])
        stats = mean_std(rows)
        cells = [fmt(stats.get(m)) for m in metrics] + [extra[c].get(name, "") for c in extra]
        body += f"| {name} | {len(rows)} | " + " | ".join(cells) + " |\n"
    return head + body


def pareto_front(points: Sequence[Mapping[str, float]], keys: Sequence[str] = ("recall", "qps")
                 ) -> list[Mapping[str, float]]:
    """The points no other point beats on every key (all maximised), sorted by the first
    key descending; ties on every key keep the first."""
    front: list[Mapping[str, float]] = []
    for p in points:
        dominated = any(all(o[k] >= p[k] for k in keys) and any(o[k] > p[k] for k in keys)
                        for o in points)
        duplicate = any(all(o[k] == p[k] for k in keys) for o in front)
        if not dominated and not duplicate:
            front.append(p)
    return sorted(front, key=lambda p: -p[keys[0]])

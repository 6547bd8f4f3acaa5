"""Paired comparison of two MLflow experiments (`recbert runs compare BASELINE CANDIDATE`):
the finished train runs of each, paired by their ``seed`` param, and for each metric the
per-seed values, each arm's mean ± std, and the mean ± std of the paired differences with
their ratio (how many stds the mean difference is from zero). This is the table BENCHMARKS.md
reports for an ablation row or a pretraining gain, read from the store instead of copied by
hand. Std is the sample std (ddof 1), as in ``benchmarks/quality.py``.

The pseudo-metric ``val`` is the best validation score (``eval.select_metric`` under the
selection protocol) of the stage that chose the model: the last stage before a refit, e.g.
``train`` after ``pretrain``. Runs log it as ``<stage>/best_score``; for older runs it is the
best validation logged while that stage trained.

Either side may instead be an *arm file* (``*.json``, :data:`ARM_FORMAT`): an experiment's
runs by seed with their metrics, written by ``recbert runs export`` (:func:`export_arm`).
An arm file keeps a baseline comparable after its store is gone (another machine, a fresh
clone): ``benchmarks/results/`` holds the arms BENCHMARKS.md compares against."""

from __future__ import annotations

import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from recbert.config import EvalConfig, TrackingConfig
from recbert.evaluation.ranking import selection_protocol
from recbert.errors import ConfigError
from recbert.io import atomic_path
from recbert.runs import experiment_names
from recbert.tracking import _client, metric_key, tracking_uri

VAL = "val"
ARM_FORMAT = "recbert.arm/1"
DEFAULT_METRICS = (VAL, "test/unseen/ndcg_at_10", "test/unseen/hr_at_10", "test_selected/unseen/ndcg_at_10",
                   "test_selected/unseen/hr_at_10", "test/all/ndcg_at_10", "time/total_seconds")


@dataclass
class Arm:
    """One experiment's runs, by seed (the newest finished run of each seed)."""
    experiment: str
    runs: dict[int, str]  # seed -> run id
    values: dict[int, dict[str, float]]  # seed -> metric -> value
    ignored: list[str] = field(default_factory=list)  # older runs of a seed that has a newer one


@dataclass
class MetricRow:
    metric: str
    seeds: list[int]  # the paired seeds that have the metric in both arms
    baseline: list[float]
    candidate: list[float]

    @property
    def differences(self) -> list[float]:
        return [c - b for b, c in zip(self.baseline, self.candidate)]


@dataclass
class Comparison:
    baseline: Arm
    candidate: Arm
    seeds: list[int]  # seeds run in both
    rows: list[MetricRow]

    def format(self) -> str:
        """A markdown table (one row per metric) and the runs it read."""
        lines = [paired_table(self.rows, self.baseline.experiment, self.candidate.experiment), ""]
        for arm in (self.baseline, self.candidate):
            lines.append(f"{arm.experiment}: " + ", ".join(f"seed {s} {arm.runs[s][:8]}" for s in sorted(arm.runs)))
            if arm.ignored:
                lines.append(f"  (older runs of the same seeds left out: {', '.join(i[:8] for i in arm.ignored)})")
        unpaired = sorted(set(self.baseline.runs) ^ set(self.candidate.runs))
        if unpaired:
            lines.append(f"seeds in one experiment only (left out): {unpaired}")
        return "\n".join(lines)


def paired_table(rows: Sequence[MetricRow], baseline: str, candidate: str) -> str:
    """The markdown table of paired rows: each arm's mean ± std, the differences' mean ±
    std, each seed's difference and mean / std."""
    lines = [f"| metric | {baseline} | {candidate} | difference (candidate - baseline) | per seed | "
             "difference / std |", "|---|---|---|---|---|---|"]
    for r in rows:
        d = r.differences
        ratio = _ratio(d)
        lines.append(f"| {r.metric} | {mean_std_text(r.baseline)} | {mean_std_text(r.candidate)} | "
                     f"{mean_std_text(d, signed=True)} | {', '.join(mean_std_text([x], signed=True) for x in d) or '-'} | "
                     f"{'-' if ratio is None else f'{ratio:+.1f}'} |")
    return "\n".join(lines)


def selecting_score(stages: Sequence) -> float:
    """The best validation score of the stage that chose a training's model: the last stage
    that is not a refit (NaN when it never validated). ``stages``: a training's stage
    results (``training.loop.FitResult``: ``name``, ``best_score``)."""
    chosen = [s for s in stages if not s.name.startswith("refit_")]
    return chosen[-1].best_score if chosen else math.nan


def compare_experiments(baseline: str, candidate: str, metrics: Sequence[str] = DEFAULT_METRICS,
                        tracking: TrackingConfig = TrackingConfig()) -> Comparison:
    """Pair the finished train runs of two experiments by seed and compare ``metrics``."""
    client = functools.cache(lambda: _client(tracking)[0])  # opened when an experiment (not an arm file) is read
    arms = [load_arm(name, metrics, client) for name in (baseline, candidate)]
    seeds = sorted(set(arms[0].runs) & set(arms[1].runs))
    if not seeds:
        raise ConfigError(f"experiments {baseline!r} (seeds {sorted(arms[0].runs)}) and {candidate!r} "
                          f"(seeds {sorted(arms[1].runs)}) have no finished train run with a common seed")
    rows = []
    for m in metrics:
        both = [s for s in seeds if m in arms[0].values[s] and m in arms[1].values[s]]
        rows.append(MetricRow(m, both, [arms[0].values[s][m] for s in both], [arms[1].values[s][m] for s in both]))
    return Comparison(arms[0], arms[1], seeds, rows)


def is_arm_file(source: str) -> bool:
    """Whether `runs compare` reads ``source`` as an arm file (``*.json``) rather than an experiment name."""
    return source.endswith(".json")


def load_arm(source: str, metrics: Sequence[str], client) -> Arm:
    """The arm ``source`` names: an arm file (``*.json``) or an experiment of the store that
    ``client()`` opens."""
    return read_arm_file(Path(source), metrics) if is_arm_file(source) else _arm(client(), source, metrics)


def export_arm(experiment: str, path: str | Path, metrics: Sequence[str] = DEFAULT_METRICS,
               tracking: TrackingConfig = TrackingConfig(), note: str = "") -> Arm:
    """Write the arm of ``experiment`` (its newest finished train run per seed and their
    ``metrics``) to the arm file ``path``, atomically; returns it."""
    arm = _arm(_client(tracking)[0], experiment, metrics)
    doc = {"format": ARM_FORMAT, "experiment": experiment, "tracking_uri": tracking_uri(tracking),
           "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "note": note,
           "runs": [{"seed": s, "run_id": arm.runs[s], "metrics": arm.values[s]} for s in sorted(arm.runs)]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return arm


def read_arm_file(path: Path, metrics: Sequence[str]) -> Arm:
    """The arm in the arm file ``path`` (its ``metrics`` that it holds); a file that is
    missing, not JSON or not an arm is one ConfigError naming it."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"arm file {path} does not exist (write one with `recbert runs export`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"arm file {path} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != ARM_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(f"{path} is not a recbert arm file: 'format' must be {ARM_FORMAT!r}, got {found!r}")
    arm = Arm(str(doc.get("experiment") or path.stem), {}, {})
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"arm file {path}: 'runs' must be a non-empty list")
    for i, run in enumerate(runs):
        try:
            seed, run_id, values = int(run["seed"]), str(run["run_id"]), run["metrics"]
            values = {m: float(values[m]) for m in metrics if m in values}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"arm file {path}: runs[{i}] needs 'seed' (integer), 'run_id' and 'metrics' "
                              f"(metric -> number): {exc!r}") from None
        if seed in arm.runs:
            raise ConfigError(f"arm file {path}: seed {seed} appears twice in 'runs'")
        arm.runs[seed], arm.values[seed] = run_id, values
    return arm


def _arm(client, experiment: str, metrics: Sequence[str]) -> Arm:
    ids = experiment_names(client, experiment)
    runs = client.search_runs(list(ids), filter_string="attributes.status = 'FINISHED' and tags.`recbert.job` = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=10_000)
    arm = Arm(experiment, {}, {})
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            continue
        if "seed" not in run.data.params:
            raise ConfigError(f"run {run.info.run_id} of experiment {experiment!r} has no 'seed' param to pair by")
        seed = int(run.data.params["seed"])
        if seed in arm.runs:  # newest first: an older run of the seed
            arm.ignored.append(run.info.run_id)
            continue
        arm.runs[seed] = run.info.run_id
        values = {m: run.data.metrics[m] for m in metrics if m in run.data.metrics}
        if VAL in metrics:
            best = selected_validation(client, run)
            if best is not None:
                values[VAL] = best
        arm.values[seed] = values
    if not arm.runs:
        raise ConfigError(f"experiment {experiment!r} has no finished train run")
    return arm


def selected_validation(client, run) -> Optional[float]:
    """The best validation score of the stage that chose the run's model (the last stage
    before a refit), or None when it never validated."""
    metrics = run.data.metrics
    stages = [k.removesuffix("/loss") for k in metrics if k.endswith("/loss") and k.count("/") == 1
              and not k.startswith("refit_")]
    if not stages:
        return None
    steps = {s: [m.step for m in client.get_metric_history(run.info.run_id, f"{s}/loss")] for s in stages}
    stage = max(stages, key=lambda s: max(steps[s], default=-1))
    logged = metrics.get(f"{stage}/best_score")
    if logged is not None:
        return logged if math.isfinite(logged) else None
    params = run.data.params
    protocol = selection_protocol(EvalConfig(exclude_seen=params.get("eval.exclude_seen") == "True"))
    key = f"val/{protocol}/{metric_key(params.get('eval.select_metric', 'ndcg@10'))}"
    within = set(steps[stage])
    scores = [m.value for m in client.get_metric_history(run.info.run_id, key) if m.step in within]
    return max(scores) if scores else None


def mean_std_text(values: Sequence[float], signed: bool = False) -> str:
    """``'0.0685 ± 0.0001'``: mean ± sample std (ddof 1) of values over seeds; one value
    alone; 4 places for scores, 1 for values of 10 and above (seconds); ``'n/a'`` for none."""
    if not values:
        return "n/a"
    places = 4 if max(abs(v) for v in values) < 10 else 1  # scores to 4 places, seconds to 1
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{places}f}"
    return f"{statistics.mean(values):{sign}.{places}f} ± {statistics.stdev(values):.{places}f}"


def _ratio(differences: list[float]) -> Optional[float]:
    if len(differences) < 2:
        return None
    sd = statistics.stdev(differences)
    return statistics.mean(differences) / sd if sd > 0 else None

"""The runs of the MLflow store, for a terminal (`recbert runs list | show | doctor`):
the recent runs with their headline metrics, one run in full, and the runs a killed
process left RUNNING (SIGKILL, out of memory, power loss), which `doctor --fix` marks
KILLED. Which process a run lives in comes from the ``recbert.pid`` / ``recbert.host``
tags every recbert run carries (:func:`recbert.tracking.system_tags`)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from recbert.config import TrackingConfig
from recbert.errors import CheckpointError, ConfigError
from recbert.tracking import ERROR_TAG, HOST_TAG, PID_TAG, _client, process_alive

# the columns of `runs list`: the first of each group a run has
HEADLINE = (("ndcg@10", ("test/unseen/ndcg_at_10", "test/all/ndcg_at_10")),
            ("hr@10", ("test/unseen/hr_at_10", "test/all/hr_at_10")),
            ("val", ("val/unseen/ndcg_at_10", "val/all/ndcg_at_10")))


@dataclass
class RunRow:
    run_id: str
    name: str
    experiment: str
    status: str
    start: float  # seconds since the epoch
    seconds: Optional[float]  # None while running
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def headline(self, column: str) -> Optional[float]:
        """The run's value for a HEADLINE column (val: the latest validation, also while running)."""
        return next((self.metrics[k] for k in dict(HEADLINE)[column] if k in self.metrics), None)


def _row(run, experiments: dict[str, str]) -> RunRow:
    info = run.info
    end = info.end_time / 1000 if info.end_time else None
    return RunRow(info.run_id, info.run_name or "", experiments.get(info.experiment_id, info.experiment_id),
                  info.status, info.start_time / 1000, None if end is None else end - info.start_time / 1000,
                  dict(run.data.metrics), dict(run.data.tags))


def experiment_names(client, experiment: Optional[str]) -> dict[str, str]:
    """Experiment id -> name: every experiment's, or the one named ``experiment`` (a
    ConfigError listing the store's names when it has none of that name)."""
    if experiment is None:
        return {e.experiment_id: e.name for e in client.search_experiments()}
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no MLflow experiment {experiment!r}; the store has {names}")
    return {found.experiment_id: found.name}


def list_runs(tracking: TrackingConfig = TrackingConfig(), experiment: Optional[str] = None, limit: int = 20,
              status: Optional[str] = None) -> list[RunRow]:
    """The newest ``limit`` top-level runs (of ``experiment``, or all), newest first."""
    if limit < 1:
        raise ConfigError(f"the number of runs to list must be >= 1, got {limit}")
    client, _ = _client(tracking)
    experiments = experiment_names(client, experiment)
    where = f"attributes.status = '{status.upper()}'" if status else ""
    runs = client.search_runs(list(experiments), filter_string=where, order_by=["attributes.start_time DESC"],
                              max_results=limit * 4)
    rows = [_row(r, experiments) for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return rows[:limit]


def format_runs(rows: list[RunRow]) -> str:
    """A fixed-width table: id, name, experiment, status, start (UTC), duration, headline metrics."""
    head = ["run id", "name", "experiment", "status", "started (UTC)", "time", *[c for c, _ in HEADLINE]]
    body = []
    for r in rows:
        took = "-" if r.seconds is None else _duration(r.seconds)
        body.append([r.run_id[:12], r.name, r.experiment, r.status,
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.start)), took,
                     *[_number(r.headline(c)) for c, _ in HEADLINE]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join(lines) + ("" if body else "\n(no runs)")


def show_run(run_id: str, tracking: TrackingConfig = TrackingConfig()) -> str:
    """One run: status, times, tags, final metrics and params, one per line."""
    client, uri = _client(tracking)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise CheckpointError(f"no MLflow run {run_id!r} in {uri}") from None
    experiments = experiment_names(client, None)
    row = _row(run, experiments)
    lines = [f"run {row.run_id}  {row.name}", f"experiment  {row.experiment}", f"status      {row.status}",
             f"started     {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row.start))} UTC",
             f"time        {'-' if row.seconds is None else _duration(row.seconds)}"]
    if ERROR_TAG in row.tags:
        lines.append(f"error       {row.tags[ERROR_TAG]}")
    lines.append("\ntags")
    lines += [f"  {k} = {v}" for k, v in sorted(row.tags.items()) if not k.startswith("mlflow.log-model")]
    lines.append("\nmetrics (last value)")
    lines += [f"  {k} = {v:.6g}" for k, v in sorted(row.metrics.items())]
    lines.append("\nparams")
    lines += [f"  {k} = {v}" for k, v in sorted(run.data.params.items())]
    return "\n".join(lines)


@dataclass
class StaleRun:
    row: RunRow
    reason: str


def find_stale_runs(tracking: TrackingConfig = TrackingConfig(), experiment: Optional[str] = None
                    ) -> tuple[list[StaleRun], list[RunRow]]:
    """RUNNING runs whose process on this host is gone, and RUNNING runs of other hosts
    (which cannot be checked from here)."""
    client, _ = _client(tracking)
    experiments = experiment_names(client, experiment)
    runs = client.search_runs(list(experiments), filter_string="attributes.status = 'RUNNING'", max_results=10_000)
    stale, elsewhere = [], []
    host = socket.gethostname()
    for run in runs:
        row = _row(run, experiments)
        tags = row.tags
        if PID_TAG not in tags:
            elsewhere.append(row)  # not a recbert run (or an old one): nothing tells its process
        elif tags.get(HOST_TAG) != host:
            elsewhere.append(row)
        elif not process_alive(tags):
            stale.append(StaleRun(row, f"process {tags[PID_TAG]} on {host} ended without closing the run "
                                       "(killed by SIGKILL, out of memory or a power loss)"))
    return stale, elsewhere


def mark_killed(stale: list[StaleRun], tracking: TrackingConfig = TrackingConfig()) -> None:
    """End each stale run as KILLED, with the reason and the way to continue as its error tag."""
    client, _ = _client(tracking)
    for s in stale:
        client.set_tag(s.row.run_id, ERROR_TAG, f"{s.reason}; continue it with `recbert train --resume "
                                                f"{s.row.run_id}` if it has checkpoints")
        client.set_terminated(s.row.run_id, "KILLED")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"

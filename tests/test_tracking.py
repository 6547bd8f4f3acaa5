"""The MLflow store under concurrency: processes opening a new SQLite store at once (the
schema migration is serialised), logging to it at once, and two trainings sharing one
store and one runs/ folder; and the per-path write lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from recbert.errors import OutputError
from recbert.io import atomic_path, exclusive
from tests.conftest import REPO, cyclic_events

WORKER = textwrap.dedent("""
    import sys
    from recbert.config import TrackingConfig
    from recbert.tracking import Tracker
    tracker = Tracker(TrackingConfig(experiment="together", tracking_uri=sys.argv[1]))
    with tracker:
        tracker.start({"worker": sys.argv[2], **{f"p{i}": i for i in range(120)}})
        for step in range(60):
            tracker.log_metrics({f"m{j}": step * j for j in range(8)}, step)
    print("done", tracker.run_id)
""")


def test_four_processes_open_and_log_to_a_new_sqlite_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # does not exist yet: all four race to create it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "locked" not in err, err[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("together")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.data.params["worker"] for r in runs} == {"0", "1", "2", "3"}
    for r in runs:
        assert r.info.status == "FINISHED" and len(r.data.params) == 121
        history = client.get_metric_history(r.info.run_id, "m3")
        assert sorted(m.step for m in history) == list(range(60)) and history[-1].value == 3 * history[-1].step


def test_two_trainings_share_one_store_and_one_runs_folder(tmp_path):
    events = tmp_path / "events.parquet"
    cyclic_events(n_users=100).write_parquet(events)
    sets = ["model.hidden=16", "model.intermediate=32", "model.layers=1", "model.max_len=8", "train.epochs=2",
            "train.objective=next_item", "train.batch_size=64", "eval.ks=[10]", "out_dir=runs", "threads=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "recbert.cli", "-q", "train", "--events", str(events),
           *[a for s in sets for a in ("--set", s)]]
    procs = [subprocess.Popen(cmd + ["--set", f"seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    ids = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        ids.append(out.split("mlflow run id: ")[1].split()[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for run_id, seed in zip(ids, (1, 2)):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["seed"] == str(seed)
        assert len(client.get_metric_history(run_id, "train/loss")) == 2
        assert (tmp_path / "runs" / run_id / "model.safetensors").is_file()
    assert len(set(ids)) == 2


HOLDER = textwrap.dedent("""
    import sys, time
    from recbert.io import exclusive
    with exclusive(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(30)
""")


def test_a_second_process_writing_the_same_output_is_refused_by_pid(tmp_path):
    target = tmp_path / "items.parquet"
    target.write_text("before")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputError, match=rf"{target} is being written by another recbert process "
                                              rf"\(pid {holder.pid}\)"):
            with atomic_path(target) as tmp:
                tmp.write_text("after")
        assert target.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["items.parquet"]
    finally:
        holder.kill()
        holder.wait()
    with atomic_path(target) as tmp:  # free again once the holder is gone
        tmp.write_text("after")
    assert target.read_text() == "after"


def test_the_lock_waits_when_asked(tmp_path):
    started = time.monotonic()
    with exclusive(tmp_path / "x", wait=True):
        pass
    with exclusive(tmp_path / "x"):
        pass
    assert time.monotonic() - started < 5

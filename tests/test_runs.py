"""`recbert runs list | show | doctor` on a private MLflow store: unique run names, the
system tags, and RUNNING runs whose process died found and marked KILLED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from recbert.config import TrackingConfig
from recbert.digest import file_sha256
from recbert.tracking import Tracker
from tests.conftest import cyclic_events
from tests.jobs.test_train import run_cli

FAST = [a for s in ("model.hidden=16", "model.intermediate=32", "model.max_len=12", "model.layers=1",
                     "train.objective=next_item", "train.epochs=1", "train.batch_size=64", "eval.ks=[10]",
                     "out_dir=runs") for a in ("--set", s)]


def _fake_run(name: str, pid: int, host: str) -> str:
    tracker = Tracker(TrackingConfig(experiment="other"))
    tracker.start({"x": 1}, run_name=name)
    tracker.set_tag("recbert.pid", str(pid))
    tracker.set_tag("recbert.host", host)
    return tracker.run_id  # left RUNNING


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_get_distinct_names_and_the_tags_of_where_they_ran(mlflow_uri, tmp_path, capsys):
    events = tmp_path / "events.parquet"
    cyclic_events(n_users=60).write_parquet(events)
    ids = []
    for _ in range(2):
        code, out, err = run_cli(["-q", "train", "--events", str(events), *FAST], capsys)
        assert code == 0, err
        ids.append(out.split("mlflow run id: ")[1].split()[0])
    from mlflow.tracking import MlflowClient

    runs = [MlflowClient(mlflow_uri).get_run(i) for i in ids]
    names = [r.info.run_name for r in runs]
    assert all(n.startswith(f"{tmp_path.name}-next_item-2") for n in names), names  # dataset-objective-time
    assert runs[0].data.tags["recbert.data_sha256"] == file_sha256(events)
    tags = runs[0].data.tags
    assert tags["recbert.data_path"] == str(events) and tags["recbert.pid"] == str(os.getpid())
    assert tags["recbert.host"] == socket.gethostname() and tags["recbert.torch_version"]
    assert tags["recbert.job"] == "train" and tags["recbert.device"] == "cpu" and int(tags["recbert.threads"]) >= 1
    assert len(set(names)) == 2  # the seeded generators do not draw them
    history = MlflowClient(mlflow_uri).get_metric_history(ids[0], "val/all/ndcg_at_10")  # the selection protocol
    assert runs[0].data.metrics["train/best_score"] == max(m.value for m in history)  # what `runs compare` reads
    dataset = runs[0].inputs.dataset_inputs[0]  # MLflow's Datasets view: path and content digest
    assert dataset.dataset.name == tmp_path.name and dataset.dataset.digest == file_sha256(events)[:32]
    assert str(events) in dataset.dataset.source and dataset.tags[0].value == "training"

    code, out, _ = run_cli(["runs", "list", "-n", "5"], capsys)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["run", "id", "name"]
    assert ids[0][:12] in out and ids[1][:12] in out and "FINISHED" in out
    code, out, _ = run_cli(["runs", "show", ids[0]], capsys)
    assert code == 0 and f"run {ids[0]}" in out and "test/all/hr_at_10 = " in out and "model.hidden = 16" in out
    code, _, err = run_cli(["runs", "show", "nope"], capsys)
    assert code == 2 and "no MLflow run 'nope'" in err
    code, _, err = run_cli(["runs", "list", "-e", "missing"], capsys)
    assert code == 2 and "no MLflow experiment 'missing'" in err


def test_doctor_finds_runs_whose_process_died_and_marks_them_killed(mlflow_uri, capsys):
    dead = _fake_run("dead", _dead_pid(), socket.gethostname())
    alive = _fake_run("alive", os.getpid(), socket.gethostname())
    remote = _fake_run("remote", 1, "another-host")

    code, out, _ = run_cli(["runs", "doctor"], capsys)
    assert code == 1
    assert f"{dead}  dead-2" in out and ": RUNNING, but process" in out and "ended without closing the run" in out
    assert alive not in out  # its process lives: it is running
    assert f"{remote}  remote-2" in out and "RUNNING on another-host: cannot be checked from here" in out

    code, out, _ = run_cli(["runs", "doctor", "--fix"], capsys)
    assert code == 0 and "marked KILLED" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    run = client.get_run(dead)
    assert run.info.status == "KILLED" and "recbert train --resume" in run.data.tags["recbert.error"]
    assert client.get_run(alive).info.status == "RUNNING" and client.get_run(remote).info.status == "RUNNING"
    code, out, _ = run_cli(["runs", "list", "--status", "killed"], capsys)
    assert code == 0 and dead[:12] in out and alive[:12] not in out


def test_resuming_a_run_whose_process_lives_is_refused(mlflow_uri):
    from recbert.errors import CheckpointError

    alive = _fake_run("alive", os.getpid(), socket.gethostname())
    with pytest.raises(CheckpointError, match=f"run {alive} is still running in process {os.getpid()}"):
        Tracker(TrackingConfig(experiment="other")).resume(alive)

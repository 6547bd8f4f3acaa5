"""Crash-safe training through the CLI: a `recbert train` killed with SIGKILL at a random
step and resumed ends with the uninterrupted run's weights and test metrics, in the same
MLflow run; SIGTERM ends the run as KILLED with the command that continues it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from recbert.cli import main
from recbert.training.checkpoints import PATTERN
from tests.conftest import REPO, cyclic_events

# two stages and a refit; a checkpoint after every optimiser step (10 steps an epoch)
SETS = ["model.hidden=16", "model.intermediate=32", "model.layers=1", "model.max_len=12", "pretrain.epochs=2",
        "pretrain.batch_size=32", "train.objective=next_item", "train.epochs=3", "train.batch_size=32",
        "train.eval_every=1", "refit=true", "eval.ks=[10]", "eval.sampled_negatives=20", "out_dir=runs",
        "device=cpu", "threads=1", "checkpoint.every_steps=1", "checkpoint.keep_when_finished=true"]
ARGS = [a for s in SETS for a in ("--set", s)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The events, a private MLflow store and the uninterrupted run (in this process)."""
    root = tmp_path_factory.mktemp("resume")
    events = root / "events.parquet"
    cyclic_events().write_parquet(events)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "recbert.cli", "-q", "train", "--events", str(events), *ARGS],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split("mlflow run id: ")[1].split()[0]
    total = _newest_number(root / "runs" / "checkpoints" / run_id)
    return {"root": root, "events": events, "uri": uri, "env": env, "reference": root / "runs" / run_id,
            "reference_id": run_id, "checkpoints": total}


def _newest_number(directory: Path) -> int:
    numbers = [int(m.group(1)) for p in directory.glob("ckpt-*.pt") if (m := PATTERN.match(p.name))]
    return max(numbers, default=0)


def _start(world, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recbert.cli", "-q", "train", "--events", str(world["events"]),
                             *ARGS], cwd=cwd, env=world["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, runs: Path, number: int, timeout: float = 240) -> Path:
    """The checkpoint folder of ``proc``'s run, once it holds checkpoint ``number``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in (runs / "checkpoints").glob("*") if (runs / "checkpoints").is_dir() else []:
            if _newest_number(folder) >= number:
                return folder
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint {number} within {timeout}s")


def _client(world):
    from mlflow.tracking import MlflowClient

    return MlflowClient(world["uri"])


def _weights(model_dir: Path):
    return load_file(model_dir / "model.safetensors")


def _test_metrics(model_dir: Path):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "test_selected/"))}


@pytest.mark.parametrize("share", [0.15, 0.55, 0.85])  # in pretraining, next-item training, the refit
def test_sigkill_at_a_random_step_then_resume_repeats_the_uninterrupted_run(world, tmp_path, share, capsys,
                                                                            monkeypatch):
    lo, hi = int(share * world["checkpoints"]) - 2, int(share * world["checkpoints"]) + 2
    kill_at = random.Random(int(share * 100)).randint(max(1, lo), hi)
    proc = _start(world, tmp_path)
    folder = _wait_for_checkpoint(proc, tmp_path / "runs", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_id = folder.name
    client = _client(world)
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves no chance to close it

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    monkeypatch.chdir(tmp_path)
    code = main(["-q", "train", "--resume", run_id])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"mlflow run id: {run_id}" in out.out  # the same run, continued

    resumed, reference = tmp_path / "runs" / run_id, world["reference"]
    a, b = _weights(reference), _weights(resumed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"weights differ after a kill at {kill_at}"
    assert _test_metrics(resumed) == _test_metrics(reference)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["recbert.resumed"] == "1"
    for key in ("train/loss", "refit_train/loss", "val/unseen/ndcg_at_10"):
        # the per-epoch records continue at the right steps, with the uninterrupted run's values
        steps = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        expected = {m.step: m.value for m in client.get_metric_history(world["reference_id"], key)}
        assert steps == expected, key


def test_sigterm_ends_the_run_killed_and_says_how_to_continue(world, tmp_path):
    proc = _start(world, tmp_path)
    folder = _wait_for_checkpoint(proc, tmp_path / "runs", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]  # -q: no progress bars either
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: terminated (SIGTERM): training stopped; its newest checkpoint is ")
    assert f"recbert train --resume {folder.relative_to(tmp_path)}`" in lines[0]  # as the user wrote out_dir
    run = _client(world).get_run(folder.name)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["recbert.error"]

    done = subprocess.run([sys.executable, "-m", "recbert.cli", "-q", "train", "--resume", str(folder)], cwd=tmp_path,
                          env=world["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _client(world).get_run(folder.name)
    assert run.info.status == "FINISHED" and "recbert.error" not in run.data.tags
    a, b = _weights(world["reference"]), _weights(tmp_path / "runs" / folder.name)
    assert all((a[k] == b[k]).all() for k in a)


def test_resume_refuses_a_finished_run_another_config_changed_events_and_unknown_runs(world, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    monkeypatch.chdir(world["root"])
    run_id = world["reference_id"]

    def error(*args):
        code = main(["-q", "train", *args])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "has FINISHED: there is nothing to resume" in error("--resume", run_id)
    err = error("--resume", run_id, "--events", str(world["events"]), *ARGS, "--set", "train.epochs=9")
    assert "config given differs in 1 key(s): train.epochs (3 in the run, 9 given)" in err
    assert "nothing to resume for 'nope'" in error("--resume", "nope")
    assert "'../../etc' is not a run id or name" in error("--resume", "../../etc")  # no path outside out_dir

    folder = world["root"] / "runs" / "checkpoints" / run_id
    original = world["events"].read_bytes()
    try:  # the events change under the run: checked before anything is trained or logged
        cyclic_events(seed=1).write_parquet(world["events"])
        err = error("--resume", str(folder))
        assert f"the events of {world['events']} changed since run {run_id} started" in err
    finally:
        world["events"].write_bytes(original)


def test_a_second_resume_of_the_same_run_at_once_is_refused(world, capsys, monkeypatch):
    import textwrap

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    folder = world["root"] / "runs" / "checkpoints" / world["reference_id"]
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from recbert.io import exclusive
        with exclusive({str(folder)!r}, what="resumed"):
            print("holding", flush=True)
            time.sleep(30)
    """)], env=world["env"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert main(["-q", "train", "--resume", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"{folder} is being resumed by another recbert process (pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()

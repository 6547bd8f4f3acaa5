"""`recbert runs compare`: two experiments' finished train runs paired by seed, the
selecting stage's best validation (logged, or read from the stage's own epochs), the
paired differences' mean ± std, and arm files standing in for an experiment."""

from __future__ import annotations

import json
import statistics

import pytest

from recbert.evaluation.comparison import (ARM_FORMAT, DEFAULT_METRICS, VAL, compare_experiments, export_arm,
                                           read_arm_file)
from recbert.errors import ConfigError
from tests.jobs.test_train import run_cli


def _run(client, experiment: str, seed: int, stages: dict[str, dict[int, float]], test: float,
         logged: dict[str, float] | None = None, status: str = "FINISHED", parent: str | None = None) -> str:
    """A train run: per stage, its validation at each epoch's step (stages follow each other)."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {"recbert.job": "train", **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    client.log_param(rid, "seed", seed)
    client.log_param(rid, "eval.exclude_seen", True)
    client.log_param(rid, "eval.select_metric", "ndcg@10")
    for stage, vals in stages.items():
        for step, v in vals.items():
            client.log_metric(rid, f"{stage}/loss", 1.0, step=step)
            if not stage.startswith("refit_"):
                client.log_metric(rid, "val/unseen/ndcg_at_10", v, step=step)
    client.log_metric(rid, "test/unseen/ndcg_at_10", test, step=99)
    for k, v in (logged or {}).items():
        client.log_metric(rid, k, v, step=99)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture
def store(mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    base = {s: _run(client, "base", s, {"train": {1: 0.10 + s, 2: 0.30 + s, 3: 0.20 + s},
                                        "refit_train": {4: 0.0, 5: 0.0}}, test=0.5 + s) for s in (0, 1, 2)}
    _run(client, "cand", 0, {"train": {1: 0.9}}, test=9.0)  # an older run of seed 0: left out
    cand = {0: _run(client, "cand", 0, {"pretrain": {1: 0.95, 2: 0.99},  # pretraining: not the selecting stage
                                        "train": {3: 0.35, 4: 0.34}}, test=0.6),
            1: _run(client, "cand", 1, {"train": {1: 1.1}}, test=1.7, logged={"train/best_score": 1.38})}
    _run(client, "cand", 3, {"train": {1: 5.0}}, test=5.0)  # no baseline seed 3
    _run(client, "cand", 2, {"train": {1: 5.0}}, test=5.0, status="KILLED")  # not finished
    _run(client, "cand", 2, {"train": {1: 5.0}}, test=5.0, parent=base[0])  # a child run
    return base, cand


def test_pairs_by_seed_and_reads_the_selecting_stages_best_validation(store):
    base, cand = store
    c = compare_experiments("base", "cand", metrics=(VAL, "test/unseen/ndcg_at_10", "missing/metric"))
    assert c.seeds == [0, 1]
    assert c.baseline.runs == {0: base[0], 1: base[1], 2: base[2]} and c.candidate.runs[0] == cand[0]
    assert len(c.candidate.ignored) == 1  # the older seed-0 run
    val, test, missing = c.rows
    assert val.baseline == pytest.approx([0.30, 1.30])  # the train stage's best, not the refit's steps
    assert val.candidate == pytest.approx([0.35, 1.38])  # after pretraining: train's epochs only; logged best
    assert val.differences == pytest.approx([0.05, 0.08])
    assert test.differences == pytest.approx([0.1, 0.2]) and missing.seeds == []
    text = c.format()
    mean, sd = statistics.mean([0.05, 0.08]), statistics.stdev([0.05, 0.08])
    assert f"| val | 0.8000 ± 0.7071 | 0.8650 ± 0.7283 | {mean:+.4f} ± {sd:.4f} | +0.0500, +0.0800 | " \
           f"{mean / sd:+.1f} |" in text
    assert "| missing/metric | n/a | n/a | n/a | - | - |" in text
    assert "seeds in one experiment only (left out): [2, 3]" in text and "older runs of the same seeds" in text


def test_unknown_experiment_and_no_common_seed_are_one_clear_error(store, mlflow_uri):
    from mlflow.tracking import MlflowClient

    with pytest.raises(ConfigError, match="no MLflow experiment 'nope'"):
        compare_experiments("base", "nope")
    _run(MlflowClient(mlflow_uri), "other", 7, {"train": {1: 0.1}}, test=0.1)
    with pytest.raises(ConfigError, match=r"'base' \(seeds \[0, 1, 2\]\) and 'other' \(seeds \[7\]\) have no finished"):
        compare_experiments("base", "other")


def test_cli_prints_the_table(store, capsys):
    code, out, err = run_cli(["runs", "compare", "base", "cand", "-m", "val"], capsys)
    assert code == 0, err
    assert out.startswith("| metric | base | cand | difference (candidate - baseline)") and "| val |" in out
    assert "test/unseen" not in out  # only the metric asked for
    code, _, err = run_cli(["runs", "compare", "base", "nope"], capsys)
    assert code == 2 and "no MLflow experiment 'nope'" in err


def test_an_exported_arm_file_stands_in_for_its_experiment(store, tmp_path, capsys, monkeypatch):
    base, cand = store
    path = tmp_path / "results" / "base.json"
    code, out, err = run_cli(["runs", "export", "base", "-o", str(path), "--note", "the recipe"], capsys)
    assert code == 0, err
    assert "seeds [0, 1, 2]" in out
    doc = json.loads(path.read_text())
    assert doc["format"] == ARM_FORMAT and doc["note"] == "the recipe"
    assert [r["run_id"] for r in doc["runs"]] == [base[0], base[1], base[2]]
    from_store = compare_experiments("base", "cand")
    from_file = compare_experiments(str(path), "cand")
    assert from_file.seeds == from_store.seeds == [0, 1]
    for a, b in zip(from_file.rows, from_store.rows):
        assert (a.metric, a.seeds, a.baseline, a.candidate) == (b.metric, b.seeds, b.baseline, b.candidate)
    assert from_file.baseline.runs == from_store.baseline.runs
    # both sides from files: no store is opened
    cand_file = tmp_path / "cand.json"
    export_arm("cand", cand_file)

    def no_store(*args):
        raise AssertionError("opened the store")

    monkeypatch.setattr("recbert.evaluation.comparison._client", no_store)
    assert compare_experiments(str(path), str(cand_file)).rows[0].candidate == from_store.rows[0].candidate


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"), ("{not json", "cannot be read as JSON"),
    ('{"format": "other"}', "is not a recbert arm file"), ("[1, 2]", "is not a recbert arm file"),
    (json.dumps({"format": ARM_FORMAT, "runs": []}), "'runs' must be a non-empty list"),
    (json.dumps({"format": ARM_FORMAT, "runs": [{"seed": "x", "run_id": "a", "metrics": {}}]}), r"runs\[0\] needs"),
    (json.dumps({"format": ARM_FORMAT, "runs": [{"seed": 1, "run_id": "a", "metrics": {}}] * 2}), "seed 1 appears twice"),
])
def test_a_bad_arm_file_is_one_error_naming_it(tmp_path, content, match):
    path = tmp_path / "arm.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as exc:
        read_arm_file(path, DEFAULT_METRICS)
    assert str(path) in str(exc.value)


def test_export_refuses_an_output_that_runs_compare_would_not_read_as_a_file(store, tmp_path, capsys):
    code, _, err = run_cli(["runs", "export", "base", "-o", str(tmp_path / "base.txt")], capsys)
    assert code != 0 and "must end in .json" in err and not (tmp_path / "base.txt").exists()

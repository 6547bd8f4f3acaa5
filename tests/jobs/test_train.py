"""End to end through the CLI: training, MLflow contents, loading back, bad input."""

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recbert.cli import main
from recbert.data.shards import open_shards
from recbert.model.recommender import SequenceRecommender
from tests.conftest import cyclic_events

FAST = ["--set", "model.hidden=32", "--set", "model.intermediate=64", "--set", "model.max_len=12",
        "--set", "pretrain.epochs=2", "--set", "train.objective=next_item", "--set", "train.epochs=3",
        "--set", "train.batch_size=64", "--set", "pretrain.batch_size=64", "--set", "out_dir=runs"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_logs_everything_to_mlflow_and_evaluates_back(cyclic_parquet, mlflow_uri, capsys):
    code, out, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST], capsys)
    assert code == 0, err
    run_id = out.split("mlflow run id: ")[1].split()[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["model.hidden"] == "32" and params["train.objective"] == "next_item"
    assert params["data.events"] == str(cyclic_parquet) and "eval.ks" in params
    for key in ("test/all/ndcg_at_10", "test/unseen/hr_at_10", "test/sampled/mrr", "time/total_seconds"):
        assert key in metrics, key
    assert metrics["test/all/hr_at_10"] > 0.5  # the ring pattern is learnt
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) == 3 and len(client.get_metric_history(run_id, "pretrain/loss")) == 2
    assert len(client.get_metric_history(run_id, "val/all/ndcg_at_10")) == 5
    files = {f.path for f in client.list_artifacts(run_id, "model")}  # an MLflow model
    assert {"model/MLmodel", "model/input_example.json", "model/requirements.txt", "model/artifacts"} <= files
    inner = {f.path for f in client.list_artifacts(run_id, f"model/artifacts/{run_id}")}  # the recbert model
    assert {f"model/artifacts/{run_id}/{n}" for n in ("config.json", "model.safetensors", "vocab.parquet",
                                                     "run_config.json", "metrics.json")} <= inner
    assert run.info.status == "FINISHED"
    assert "plots/training.png" in {f.path for f in client.list_artifacts(run_id, "plots")}
    assert not (Path("runs") / "checkpoints" / run_id).exists()  # finished: its checkpoints are gone

    code, out2, err2 = run_cli(["-q", "evaluate", "--run-id", run_id], capsys)
    assert code == 0, err2
    assert "Downloading artifacts" not in err2  # -q: no MLflow download bar either
    hr10 = float(out2.splitlines()[2].split("|")[6])  # 'all' row, hr@10 column
    assert hr10 == pytest.approx(metrics["test/all/hr_at_10"], abs=5e-5)

    code, out3, _ = run_cli(["recommend", "--run-id", run_id, "--items", "3,4,5", "-k", "2"], capsys)
    assert code == 0 and out3.splitlines()[0].split("\t")[1] == "6"  # the ring continues


def test_default_tracking_home_is_local_sqlite(tmp_path, monkeypatch, cyclic_parquet, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST,
                              "--set", "pretrain.epochs=0", "--set", "train.epochs=1"], capsys)
    assert code == 0, err
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    run_id = out.split("mlflow run id: ")[1].split()[0]
    model = f"{run_id}/artifacts/model/artifacts/{run_id}/model.safetensors"  # the recbert model in the MLflow model
    assert list((tmp_path / "mlruns" / "artifacts").glob(model))


def test_string_ids_and_time_split_without_mlflow(tmp_path, capsys):
    path = tmp_path / "ev.parquet"
    cyclic_events(string_ids=True).write_parquet(path)
    code, out, err = run_cli(["-q", "train", "--no-mlflow", "--events", str(path), *FAST,
                              "--set", "data.split=time", "--set", f"out_dir={tmp_path / 'runs'}"], capsys)
    assert code == 0, err
    assert "mlflow: off" in out
    model_dir = Path(out.split("model: ")[1].split()[0])
    code, out, _ = run_cli(["recommend", "--model-dir", str(model_dir), "--items", "item-1,item-2", "-k", "1"], capsys)
    assert code == 0 and out.split("\t")[1] == "item-3"


def test_hash_buckets_travel_from_the_config_to_the_saved_model(tmp_path, capsys):
    path = tmp_path / "ev.parquet"
    cyclic_events(string_ids=True).write_parquet(path)
    code, out, err = run_cli(["-q", "train", "--no-mlflow", "--events", str(path), *FAST, "--set", "pretrain.epochs=0",
                              "--set", "train.epochs=1", "--set", "data.max_items=40", "--set", "data.hash_buckets=8",
                              "--set", f"out_dir={tmp_path / 'runs'}"], capsys)
    assert code == 0, err
    model_dir = Path(out.split("model: ")[1].split()[0])
    from recbert.model.recommender import SequenceRecommender

    model = SequenceRecommender.from_pretrained(model_dir)
    assert model.vocab.hash_buckets == model.config.hash_buckets == 8 and model.vocab.n_items == 40
    code, out, err = run_cli(["recommend", "--model-dir", str(model_dir), "--items", "item-1,never-seen", "-k", "40"],
                             capsys)
    assert code == 0 and "1 unknown item id(s) scored as their hash buckets" in err
    ids = [line.split("\t")[1] for line in out.splitlines()]
    assert len(ids) == 40 and set(ids) <= set(model.vocab.item_ids) | {"None"}


@pytest.mark.parametrize("mutate,expected", [
    (lambda df: df.drop("timestamp"), "missing column(s) ['timestamp']"),
    (lambda df: df.with_columns(pl.when(pl.col("user_id") < 3).then(None).otherwise(pl.col("item_id")).alias("item_id")),
     "null value(s) in column 'item_id'"),
    (lambda df: df.with_columns(pl.col("item_id").cast(pl.Float64)), "column 'item_id' (item id) must hold integers"),
    (lambda df: df.head(0), "holds no events"),
])
def test_bad_events_give_one_clear_line(tmp_path, capsys, mutate, expected):
    path = tmp_path / "bad.parquet"
    mutate(cyclic_events()).write_parquet(path)
    code, out, err = run_cli(["train", "--no-mlflow", "--events", str(path), *FAST], capsys)
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_bad_config_and_missing_model_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_cli(["train", "--set", "train.epohcs=3"], capsys)
    assert code == 2 and "unknown config key 'train.epohcs'; did you mean 'train.epochs'?" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nhidden = 'wide'\n")
    code, _, err = run_cli(["train", "-c", str(cfg)], capsys)
    assert code == 2 and "model.hidden" in err and "integer" in err
    code, _, err = run_cli(["evaluate", "--model-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and "has no config.json" in err
    code, _, err = run_cli(["evaluate"], capsys)
    assert code == 2 and "exactly one" in err


def test_learned_fusion_weights_are_logged(cyclic_parquet, mlflow_uri, capsys):
    code, out, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST, "--set", "pretrain.epochs=0",
                              "--set", "train.objective=mlm", "--set", "train.epochs=1",
                              "--set", "model.fusion=learned"], capsys)
    assert code == 0, err
    run_id = out.split("mlflow run id: ")[1].split()[0]
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(mlflow_uri).get_run(run_id).data.metrics
    weights = [metrics[f"fusion/layer_{i}_weight"] for i in range(3)]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and all(w > 0 for w in weights)


def test_diverged_training_is_one_line_error_and_a_failed_run(cyclic_parquet, mlflow_uri, capsys):
    code, out, err = run_cli(["train", "--events", str(cyclic_parquet), *FAST, "--set", "pretrain.epochs=0",
                              "--set", "train.lr=1e30", "--set", "train.grad_clip=0",
                              "--set", "tracking.experiment=diverge"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training loss is not finite" in lines[0] and "diverged at epoch 1" in lines[0]
    assert "Traceback" not in err
    assert not list(Path("runs").glob("*/model.safetensors"))  # no "best" model is written
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FAILED"
    assert "training loss is not finite" in run.data.tags["recbert.error"]
    assert "test/all/hr_at_10" not in run.data.metrics


def test_train_streams_from_shards_written_by_recbert_shard(tmp_path, monkeypatch, cyclic_parquet, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["-q", "shard", "--events", str(cyclic_parquet), "--out", "shards"], capsys)
    assert code == 0, err
    assert out.startswith("shards: 1 shard(s), ") and "evaluated users" in out
    written = (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns
    stream = ["--set", "data.shards=shards", "--set", "data.loader_workers=1", "--set", "pretrain.epochs=1",
              "--set", "train.epochs=2"]
    code, out, err = run_cli(["-q", "train", "--no-mlflow", "--events", str(cyclic_parquet), *FAST, *stream], capsys)
    assert code == 0, err
    assert (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns == written  # reused, not rewritten
    model_dir = out.split("model: ")[1].split()[0]
    code, out2, err2 = run_cli(["-q", "evaluate", "--model-dir", model_dir], capsys)
    assert code == 0, err2
    assert float(out2.splitlines()[2].split("|")[6]) > 0.5  # the ring pattern is learnt from the stream
    # users exported from the shards (streamed, the default) and from the events: the same vectors
    for name, extra in (("from_shards", []), ("from_events", ["--events", str(cyclic_parquet)])):
        code, _, err3 = run_cli(["-q", "export", "--model-dir", model_dir, "--what", "users", "--out",
                                 f"{name}.parquet", "--no-mlflow", *extra], capsys)
        assert code == 0, err3
    shards = pl.read_parquet("from_shards.parquet").sort("user_id")
    events = pl.read_parquet("from_events.parquet").sort("user_id")
    assert shards["user_id"].to_list() == events["user_id"].to_list()
    assert np.allclose(np.stack(shards["embedding"].to_list()), np.stack(events["embedding"].to_list()), atol=1e-6)


def test_recbert_shard_needs_a_folder(cyclic_parquet, capsys):
    code, _, err = run_cli(["-q", "shard", "--events", str(cyclic_parquet)], capsys)
    assert code == 2 and "name the shard folder with --out or data.shards" in err


def test_refit_retrains_the_selected_epochs_on_the_validation_targets(cyclic_parquet, mlflow_uri, capsys):
    code, out, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST, "--set", "refit=true",
                              "--set", "train.epochs=4", "--set", "train.eval_every=2"], capsys)
    assert code == 0, err
    run_id = out.split("mlflow run id: ")[1].split()[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    metrics = client.get_run(run_id).data.metrics
    # the last stage again, from the pretrained weights, for the epochs its validation chose,
    # with no validation of its own
    best = int(metrics["train/best_epoch"])
    assert len(client.get_metric_history(run_id, "refit_train/loss")) == best >= 1
    assert not client.get_metric_history(run_id, "refit_pretrain/loss")
    assert len(client.get_metric_history(run_id, "val/all/ndcg_at_10")) == 2 + 2
    assert metrics["test_selected/all/hr_at_10"] > 0.5 and metrics["test/all/hr_at_10"] > 0.5
    assert metrics["refit_train/steps"] >= metrics["train/steps"]  # one more event per evaluated user


def test_refit_with_shards_is_a_config_error(tmp_path, cyclic_parquet, capsys):
    code, _, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST, "--set", "refit=true",
                            "--set", f"data.shards={tmp_path / 'sh'}", "--set", "tracking.enabled=false"], capsys)
    assert code != 0 and "refit" in err and "Traceback" not in err


def test_init_from_fine_tunes_a_saved_model_on_another_log(tmp_path, cyclic_parquet, capsys, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    off = ["--set", "tracking.enabled=false"]
    code, out, err = run_cli(["-q", "train", "--events", str(cyclic_parquet), *FAST, *off], capsys)
    assert code == 0, err
    saved = out.split("model: ")[1].split()[0]
    # another log: fewer users walking the same ring, and one user whose items the model never saw
    narrow = tmp_path / "narrow.parquet"
    pl.concat([cyclic_events(n_users=120, seed=5),
               pl.DataFrame({"user_id": [999] * 3, "item_id": [500, 501, 502], "timestamp": [1, 2, 3]})]
              ).write_parquet(narrow)
    # one step at a learning rate too small to learn anything: what the run knows, it brought
    still = [*FAST, *off, "--set", "pretrain.epochs=0", "--set", "train.epochs=1", "--set", "train.lr=1e-9"]

    def hr10(extra):
        code, out, err = run_cli(["train", "--events", str(narrow), *still, *extra], capsys)
        assert code == 0, err
        return float(next(line for line in out.splitlines() if line.startswith("| all")).split("|")[6])

    caplog.clear()
    warm = hr10(["--set", f"init_from={saved}", "--set", "model.dropout=0.3"])
    log = caplog.text
    cold = hr10([])
    assert warm > 0.9 and cold < 0.5, (warm, cold)
    assert f"starting from the model in {saved} (60 items)" in log
    assert "3 of" in log and "read as [UNK]" in log  # the unseen items, under the saved vocabulary

    code, _, err = run_cli(["-q", "train", "--events", str(narrow), *still, "--set", f"init_from={saved}",
                            "--set", "model.hidden=16"], capsys)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "model.hidden = 32 (this run: 16)" in err
    # out of core: the shards are written with the saved vocabulary, and the run is the same
    caplog.clear()
    streamed = hr10(["--set", f"init_from={saved}", "--set", "model.dropout=0.3",
                     "--set", f"data.shards={tmp_path / 'sh'}"])
    assert streamed == warm, (streamed, warm)
    assert "are items the given vocabulary lacks: they read as [UNK]" in caplog.text
    assert open_shards(tmp_path / "sh").vocab() == SequenceRecommender.from_pretrained(saved).vocab
    code, out, err = run_cli(["-q", "shard", "--events", str(narrow), "--out", str(tmp_path / "sh2"),
                              "--set", f"init_from={saved}"], capsys)  # written ahead, as a train run would
    assert code == 0, err
    assert open_shards(tmp_path / "sh2").vocab() == open_shards(tmp_path / "sh").vocab() and "60 items" in out


def test_candidates_restrict_validation_and_test_and_evaluate_keeps_the_models_eval_settings(
        tmp_path, cyclic_parquet, capsys, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    on_sale = tmp_path / "on_sale.parquet"
    pl.DataFrame({"item_id": list(range(0, 60, 2))}).write_parquet(on_sale)  # half the ring
    common = [*FAST, "--set", "tracking.enabled=false", "--set", "pretrain.epochs=0", "--set", "train.epochs=1",
              "--set", "eval.exclude_seen=true"]

    def table(out):
        rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:-1]]
                for line in out.splitlines() if line.startswith("| ") and not line.startswith("| protocol")}
        return rows

    code, out, err = run_cli(["train", "--events", str(cyclic_parquet), *common,
                              "--set", f"eval.candidates={on_sale}"], capsys)
    assert code == 0, err
    trained = table(out)
    model_dir = out.split("model: ")[1].split()[0]
    assert f"ranked against every candidate item ({on_sale})" in out
    assert "ranking among 30 of the 30 items" in caplog.text and "val targets are not candidates" in caplog.text
    # evaluate: --set eval.* lays over the model's eval settings (exclude_seen stays, unseen is the selection)
    code, out, err = run_cli(["evaluate", "--model-dir", model_dir, "--set", f"eval.candidates={on_sale}"], capsys)
    assert code == 0, err
    assert table(out) == trained and "unseen (selection)" in table(out)
    code, out, err = run_cli(["evaluate", "--model-dir", model_dir, "--set", "eval.sampled_negatives=0"], capsys)
    assert code == 0, err
    assert table(out) == {k: v for k, v in trained.items() if k != "sampled"}  # the model's candidates stay
    code, out, err = run_cli(["evaluate", "--model-dir", model_dir, "--set", "eval.candidates=null"], capsys)
    assert code == 0, err
    unrestricted = table(out)
    assert "unseen (selection)" in unrestricted and "ranked against every item" in out
    # half the targets are no candidates (misses) there; ranked among every item, some of them are hits
    assert unrestricted["all"][0] > trained["all"][0]
    code, out, err = run_cli(["evaluate", "--model-dir", model_dir, "--set", "data.split=time"], capsys)
    assert code != 0 and "takes eval.* keys only" in err and len(err.strip().splitlines()) == 1

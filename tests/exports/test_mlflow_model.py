"""The trained model as an MLflow model: pyfunc loading by run and by registry version,
its signature and input example, string ids, bad input, and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from recbert.cli import main
from recbert.errors import RecbertError
from tests.conftest import REPO, cyclic_events

FAST = [a for s in ("model.hidden=32", "model.intermediate=64", "model.max_len=12", "train.objective=next_item",
                    "train.epochs=3", "train.batch_size=64", "eval.ks=[10]", "out_dir=runs") for a in ("--set", s)]


def _train(events, capsys, *extra) -> str:
    code = main(["-q", "train", "--events", str(events), *FAST, *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out.split("mlflow run id: ")[1].split()[0]


@pytest.fixture
def ring(tmp_path, mlflow_uri, capsys):
    events = tmp_path / "events.parquet"
    cyclic_events().write_parquet(events)
    return _train(events, capsys, "--register", "ring-recommender")


def test_pyfunc_loads_by_run_id_and_recommends_the_ring(ring, mlflow_uri):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"runs:/{ring}/model")
    out = model.predict(pd.DataFrame({"items": [[3, 4, 5], [10, 11]]}), params={"k": 2})
    assert list(out.columns) == ["item_ids", "scores"] and len(out) == 2
    assert out["item_ids"][0][0] == 6 and out["item_ids"][1][0] == 12  # the ring continues
    assert len(out["scores"][0]) == 2 and out["scores"][0][0] >= out["scores"][0][1]
    assert 5 not in model.predict(pd.DataFrame({"items": [[3, 4, 5]]}), params={"k": 10})["item_ids"][0]
    kept = model.predict(pd.DataFrame({"items": [[5, 5, 5, 5]]}), params={"k": 60, "exclude_seen": False})
    assert 5 in kept["item_ids"][0]
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["items"]
    assert signature.outputs.input_names() == ["item_ids", "scores"]
    assert {p.name: p.default for p in signature.params.params} == {"k": 10, "exclude_seen": True}
    example = json.loads(open(mlflow.artifacts.download_artifacts(f"runs:/{ring}/model/input_example.json")).read())
    assert example["columns"] == ["items"] and len(example["data"][0][0]) == 3


def test_the_registry_version_carries_the_test_metrics(ring, mlflow_uri):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    version = client.get_model_version("ring-recommender", "1")
    assert version.run_id == ring and "\ntest/all/hr@10: 1.0000" in version.description  # the ring is learnt
    assert "\ntest/n_users: 300" in version.description
    out = mlflow.pyfunc.load_model("models:/ring-recommender/1").predict(pd.DataFrame({"items": [[7, 8]]}),
                                                                      params={"k": 1})
    assert out["item_ids"][0] == [9]


def test_string_ids_and_bad_input(tmp_path, mlflow_uri, capsys):
    import mlflow.pyfunc

    events = tmp_path / "events.parquet"
    cyclic_events(n_users=200, string_ids=True).write_parquet(events)
    run_id = _train(events, capsys)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert str(model.metadata.signature.inputs.inputs[0].type) == "Array(string)"
    out = model.predict(pd.DataFrame({"items": [["item-3", "item-4", "never-seen"]]}), params={"k": 3})
    assert all(isinstance(i, str) for i in out["item_ids"][0])
    with pytest.raises(Exception, match="items"):
        model.predict(pd.DataFrame({"history": [["item-3"]]}))
    from recbert.exports.mlflow_model import recommend_frame

    with pytest.raises(RecbertError, match=r"needs the column\(s\) \['items'\]"):
        recommend_frame(None, pd.DataFrame({"x": [1]}), {"k": 1, "exclude_seen": True})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_recommendations(ring, mlflow_uri, tmp_path):
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{ring}/model",
                               "--env-manager", "local", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the model server did not start in 120 s"
                time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["items"], "data": [[[3, 4, 5]]]}, "params": {"k": 3}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["predictions"][0]["item_ids"][0] == 6 and len(answer["predictions"][0]["scores"]) == 3
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_a_fine_tuned_classifier_is_logged_as_a_pyfunc_model(mlflow_uri, tmp_path, capsys):
    import mlflow.pyfunc
    import numpy as np
    import polars as pl

    from recbert.heads import load_head
    from tests.jobs.test_finetune import DATA, ML, TINY

    args = ["-q", "finetune", "--task", "gender", "--scratch", "--folds", "2", "--epochs", "1",
            "--save-model", str(tmp_path / "head"), "--set", "experiment.baselines=false"] + \
        [a for s in TINY + DATA for a in ("--set", s)]
    assert main(args) == 0
    run_id = capsys.readouterr().out.split("mlflow run id: ")[1].split()[0]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/head_model")
    events = pl.read_parquet(ML / "events.parquet").sort("timestamp", maintain_order=True)
    histories = [events.filter(pl.col("user_id") == u)["item_id"].to_list() for u in (1, 2)]
    out = model.predict(pd.DataFrame({"items": histories}))
    assert list(out.columns) == ["prediction", "probability", "proba"]
    assert set(out["prediction"]) <= {"F", "M"}
    head = load_head(tmp_path / "head")
    direct = model.predict(pd.DataFrame({"items": [histories[1]]}))["proba"][0]
    from recbert.heads.base import rows_from_tokens

    window = int(head.metadata["window"])
    p = float(head.predict_proba(rows_from_tokens([head.vocab.encode(np.array(histories[1]))], window))[0])
    assert direct[1] == pytest.approx(p, abs=1e-6) and sum(direct) == pytest.approx(1.0)
    assert [c.name for c in model.metadata.signature.outputs.inputs] == ["prediction", "probability", "proba"]


def test_a_ctr_head_as_pyfunc_answers_click_probabilities(pretrained_dir, tmp_path):
    import mlflow.pyfunc
    import numpy as np
    import torch

    from recbert.exports.mlflow_model import save_head_mlflow_model
    from recbert.heads import CTRModel
    from recbert.heads.base import rows_from_tokens
    from recbert.jobs.finetune import FinetuneRunConfig, run_ctr
    from tests.jobs.test_finetune import DATA

    cfg = FinetuneRunConfig.load(None, DATA + ["tracking.enabled=false", "experiment.epochs=1",
                                               "experiment.max_train_samples=300", "experiment.max_val_samples=100",
                                               "experiment.max_test_samples=200", "experiment.baselines=false"])
    run_ctr(pretrained_dir, cfg, variants=("pretrained",), save_dir=tmp_path / "ctr")
    model = mlflow.pyfunc.load_model(str(save_head_mlflow_model(tmp_path / "ctr", tmp_path / "mlflow_ctr")))
    out = model.predict(pd.DataFrame({"items": [[1, 2, 3], [50]], "item": [50, 7]}))
    head = CTRModel.from_pretrained(tmp_path / "ctr")
    rows = rows_from_tokens([head.vocab.encode(np.array(h)) for h in ([1, 2, 3], [50])], int(head.metadata["window"]))
    direct = head.predict_proba(rows, torch.from_numpy(head.vocab.encode(np.array([50, 7])))).numpy()
    np.testing.assert_allclose(out["click_proba"].to_numpy(), direct, atol=1e-6)
    with pytest.raises(Exception, match="item"):
        model.predict(pd.DataFrame({"items": [[1, 2]]}))

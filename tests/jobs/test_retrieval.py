"""Export -> Faiss index -> batch recommendations, and exact-index metrics equal the model's."""

import numpy as np
import polars as pl
import pytest
import torch

from recbert.jobs.retrieval import run_batch_recommend, run_export, run_index_build, run_index_query
from recbert.cli import main
from recbert.jobs.train import run_training
from recbert.config import RunConfig
from recbert.errors import DataError
from recbert.evaluation.metrics import ranking_metrics
from recbert.evaluation.ranking import evaluate_ranking, tie_aware_ranks
from recbert.exports.embeddings import export_users
from recbert.index import IndexConfig, VectorIndex, read_embeddings_parquet
from recbert.model.recommender import SequenceRecommender
from tests.conftest import cyclic_events


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrieval")
    events = tmp / "events.parquet"
    cyclic_events(string_ids=True).write_parquet(events)
    cfg = RunConfig.load(None, [f"data.events={events}", "model.hidden=16", "model.intermediate=32",
                                "model.max_len=12", "train.objective=next_item", "train.epochs=3",
                                "train.batch_size=64", "tracking.enabled=false", f"out_dir={tmp / 'runs'}",
                                "eval.sampled_negatives=0"])
    result = run_training(cfg)
    return tmp, result.model_dir, cfg


def test_export_round_trip_keeps_ids_and_vectors(trained):
    tmp, model_dir, _ = trained
    model = SequenceRecommender.from_pretrained(model_dir)
    assert run_export(model_dir, "items", tmp / "items.parquet") == model.vocab.n_items
    ids, vecs, meta = read_embeddings_parquet(tmp / "items.parquet", "item_id")
    assert list(ids) == list(model.vocab.item_ids)
    assert np.allclose(vecs[:, :-1], model.item_vectors().detach().numpy())
    assert np.allclose(vecs[:, -1], model.scorer.bias.detach().numpy())
    assert meta["kind"] == "items" and meta["dim"] == 17 and meta["bias_column"] is True
    n_users = run_export(model_dir, "users", tmp / "users.parquet", batch_size=64)  # several batches
    users = pl.read_parquet(tmp / "users.parquet")
    assert n_users == users.height == 300 and users["user_id"][0] == "u0"
    run_export(model_dir, "items", tmp / "items_cos.parquet", normalize=True)
    _, cos, _ = read_embeddings_parquet(tmp / "items_cos.parquet", "item_id")
    assert cos.shape[1] == 16 and np.allclose(np.linalg.norm(cos, axis=1), 1.0, atol=1e-5)


def test_user_export_with_a_pooling(trained):
    tmp, model_dir, _ = trained
    model = SequenceRecommender.from_pretrained(model_dir).eval()
    run_export(model_dir, "users", tmp / "users_mean.parquet", pooling="mean", batch_size=100)
    ids, vecs, meta = read_embeddings_parquet(tmp / "users_mean.parquet", "user_id")
    assert vecs.shape == (300, 16) and meta["pooling"] == "mean" and meta["bias_column"] is False
    # user u0's vector is the masked mean of the encoder output over its own history
    events = pl.read_parquet(tmp / "events.parquet").filter(pl.col("user_id") == ids[0]).sort("timestamp")
    tokens = torch.from_numpy(model.vocab.encode(events["item_id"].to_numpy())[-model.config.max_len:][None])
    want = model(tokens).sequence_output.mean(1)[0].detach().numpy()
    np.testing.assert_allclose(vecs[0], want, rtol=1e-4, atol=1e-5)
    run_export(model_dir, "users", tmp / "users_mm.parquet", pooling="mean_max")
    assert read_embeddings_parquet(tmp / "users_mm.parquet", "user_id")[1].shape == (300, 32)
    with pytest.raises(DataError, match="user exports only"):
        run_export(model_dir, "items", tmp / "x.parquet", pooling="mean")


def test_exact_index_metrics_equal_the_models_full_ranking(trained):
    tmp, model_dir, cfg = trained
    from recbert.data.prepare import prepare_data

    model = SequenceRecommender.from_pretrained(model_dir)
    _, splits = prepare_data(cfg, vocab=model.vocab)
    expected = evaluate_ranking(model, splits.test, cfg.eval)

    run_export(model_dir, "items", tmp / "items.parquet")
    index = VectorIndex.from_parquet(tmp / "items.parquet", "item_id", config=IndexConfig(kind="flat"))
    export_users(model, splits.test.inputs, tmp / "test_users.parquet")
    _, queries, _ = read_embeddings_parquet(tmp / "test_users.parquet", "user_id")
    scores, ids = index.search(queries, model.vocab.n_items)
    targets = model.vocab.decode(splits.test.targets)
    at = np.array([list(row).index(t) for row, t in zip(ids, targets)])
    target_score = torch.from_numpy(scores[np.arange(len(at)), at][:, None])
    ranks = (tie_aware_ranks(torch.from_numpy(scores), target_score) - 0.5).numpy()  # ties count half
    got = ranking_metrics(ranks, cfg.eval.ks)
    for name in ("hr@10", "ndcg@10", "mrr"):
        assert got[name] == pytest.approx(expected[f"all/{name}"], abs=1e-9), name


def test_batch_recommendations_exclude_seen_items_and_skip_unknown_users(trained):
    tmp, model_dir, _ = trained
    run_export(model_dir, "items", tmp / "items.parquet")
    run_index_build(tmp / "items.parquet", tmp / "idx", IndexConfig(kind="flat"), overwrite=True)
    pl.DataFrame({"user_id": ["u1", "u2", "nobody"]}).write_parquet(tmp / "who.parquet")
    res = run_batch_recommend(model_dir, tmp / "idx", tmp / "recs.parquet", k=5, users=tmp / "who.parquet")
    recs = pl.read_parquet(tmp / "recs.parquet")
    assert res.users == 2 and res.recall_at_k is None and recs.height == 10 and recs["rank"].to_list()[:5] == [1, 2, 3, 4, 5]
    events = pl.read_parquet(tmp / "events.parquet")
    for user in ("u1", "u2"):
        seen = set(events.filter(pl.col("user_id") == user)["item_id"])
        got = recs.filter(pl.col("user_id") == user)
        assert not seen & set(got["item_id"]) and got["score"].is_sorted(descending=True)
    run_batch_recommend(model_dir, tmp / "idx", tmp / "recs_all.parquet", k=3, exclude_seen=False)
    assert pl.read_parquet(tmp / "recs_all.parquet").height == 300 * 3


def test_approximate_index_reports_recall_against_exact_search(trained):
    tmp, model_dir, _ = trained
    run_export(model_dir, "items", tmp / "items.parquet")
    # every IVF cell probed = exact: recall 1.0; one cell of many: below 1
    run_index_build(tmp / "items.parquet", tmp / "ivf_all", IndexConfig(kind="ivf_flat", nlist=4, nprobe=4,
                                                                         device="cpu"), overwrite=True)
    res = run_batch_recommend(model_dir, tmp / "ivf_all", tmp / "r1.parquet", k=5, recall_sample=50)
    assert res.users == 300 and res.recall_users == 50 and res.recall_at_k == pytest.approx(1.0)
    run_index_build(tmp / "items.parquet", tmp / "ivf_one", IndexConfig(kind="ivf_flat", nlist=8, nprobe=1,
                                                                         device="cpu"), overwrite=True)
    res = run_batch_recommend(model_dir, tmp / "ivf_one", tmp / "r2.parquet", k=5, recall_sample=1000)
    assert res.recall_users == 300 and 0.0 < res.recall_at_k < 1.0
    assert run_batch_recommend(model_dir, tmp / "ivf_one", tmp / "r3.parquet", k=5, recall_sample=0).recall_at_k is None


def test_index_query_for_a_user_or_a_session_matches_the_model(trained, capsys):
    tmp, model_dir, _ = trained
    run_export(model_dir, "items", tmp / "items.parquet")
    run_index_build(tmp / "items.parquet", tmp / "idx", IndexConfig(kind="flat"), overwrite=True)
    model = SequenceRecommender.from_pretrained(model_dir)
    session = ["item-3", "item-4", "item-5"]
    ids, scores, info = run_index_query(model_dir, tmp / "idx", 5, items=session + ["item-unknown"])
    want, _ = model.recommend([session + ["item-unknown"]], k=5)
    assert ids.tolist() == want[0].tolist() and info["unknown_items"] == 1
    assert not set(session) & set(ids.tolist())

    run_batch_recommend(model_dir, tmp / "idx", tmp / "recs.parquet", k=5)
    batch = pl.read_parquet(tmp / "recs.parquet").filter(pl.col("user_id") == "u7")
    ids, scores, info = run_index_query(model_dir, tmp / "idx", 5, user_id="u7")
    assert ids.tolist() == batch["item_id"].to_list()
    np.testing.assert_allclose(scores, batch["score"].to_numpy(), rtol=1e-5)

    assert main(["index", "query", "--model-dir", str(model_dir), "--index", str(tmp / "idx"),
                 "--items", "item-3,item-4,nope", "-k", "3"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.strip().splitlines()) == 3 and "1 unknown item id(s)" in cap.err
    assert main(["index", "query", "--model-dir", str(model_dir), "--index", str(tmp / "idx"),
                 "--user", "nobody"]) == 2
    assert "user 'nobody' has no events" in capsys.readouterr().err
    assert main(["index", "query", "--model-dir", str(model_dir), "--index", str(tmp / "idx")]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_index_from_another_model_is_rejected(trained, tmp_path):
    _, model_dir, _ = trained
    other = VectorIndex.build(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32),
                              [f"item-{i}" for i in range(50)], IndexConfig(kind="flat"))
    other.save(tmp_path / "idx")
    with pytest.raises(DataError, match="dim 8"):
        run_batch_recommend(model_dir, tmp_path / "idx", tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()
    with pytest.raises(FileNotFoundError):
        run_batch_recommend(model_dir, tmp_path / "missing-idx", tmp_path / "r.parquet")


def test_retrieval_jobs_are_tracked_in_mlflow(trained, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    _, model_dir, _ = trained
    common = ["--model-dir", str(model_dir)]
    assert main(["export", *common, "--what", "items", "--out", str(tmp_path / "items.parquet")]) == 0
    assert main(["index", "build", "--embeddings", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "idx"),
                 "--kind", "ivf_flat", "--set", "nlist=4", "--set", "nprobe=1"]) == 0
    assert main(["recommend-batch", *common, "--index", str(tmp_path / "idx"), "--out", str(tmp_path / "r.parquet"),
                 "-k", "5", "--recall-sample", "40"]) == 0
    assert main(["export", *common, "--what", "users", "--out", str(tmp_path / "u.parquet"), "--no-mlflow"]) == 0
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("recbert-retrieval")
    runs = {r.data.tags["recbert.job"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"export-items", "index-build", "recommend-batch"}  # --no-mlflow left no run
    assert runs["export-items"].data.metrics["rows"] == 60 and runs["export-items"].data.params["what"] == "items"
    assert runs["index-build"].data.params["index.kind"] == "ivf_flat" and runs["index-build"].data.metrics["count"] == 60
    rec = runs["recommend-batch"].data
    assert rec.metrics["users"] == 300 and 0 < rec.metrics["recall_at_5"] <= 1 and rec.params["k"] == "5"

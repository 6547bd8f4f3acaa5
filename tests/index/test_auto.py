"""Tests for recbert.index.auto: choosing an index by measured recall and speed."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import faiss

from recbert.cli import main
from recbert.index import IndexConfig, IndexConfigError, IndexInputError, VectorIndex, recall_at_k
from recbert.index import device as index_device
from recbert.index.auto import AutoSettings, build_auto, exact_neighbours
from recbert.index.spec import FLAT_QUANTIZER_MAX_CELLS, INDEX_KINDS, coarse_quantizer_for

DIM = 16


def mixture(n: int, seed: int, centres: int = 40) -> np.ndarray:
    """Clustered vectors with varying norms, like trained embeddings (seeded)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(centres, DIM))  # the same clusters for every seed
    x = means[rng.integers(0, centres, size=n)] + 0.5 * rng.normal(size=(n, DIM))
    return (x * rng.lognormal(0.0, 0.25, size=(n, 1))).astype(np.float32)


@pytest.fixture(autouse=True)
def cpu_one_thread(monkeypatch):
    monkeypatch.setattr(index_device, "gpu_available", lambda: False)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return mixture(6000, seed=1)


IDS = np.arange(6000, dtype=np.int64) * 3 + 11  # not positions


def fresh_recall(index: VectorIndex, x: np.ndarray, ids: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` on new queries from the vectors' distribution."""
    q = mixture(300, seed=2)
    truth = ids[exact_neighbours(x, q, k, index.metric)]
    return recall_at_k(index.search(q, k)[1], truth, k)


def test_auto_picks_an_index_that_reaches_the_target(items):
    settings = AutoSettings(target_recall=0.9, sample=2000, queries=200, repeats=3, min_speedup=1e-9)
    index = build_auto(items, IDS, IndexConfig(), settings)
    m = index.measured
    assert m["method"] == "auto" and m["chosen"] == index.kind != "flat"  # any speed-up allowed
    assert m["recall"] >= 0.9 and m["qps"] > 0 and m["exact_qps"] > 0
    # the speed-up is the median of 3 rounds timed back to back, each side's QPS their median
    assert len(m["rates"]) == len(m["exact_rates"]) == 3
    assert m["speedup"] == pytest.approx(statistics.median(a / e for a, e in zip(m["rates"], m["exact_rates"])))
    assert m["qps"] == pytest.approx(statistics.median(m["rates"]))
    assert m["exact_qps"] == pytest.approx(statistics.median(m["exact_rates"]))
    assert m["queries"] == 200 and m["queries_from"] == "held-out vectors" and m["sample"] == 2000
    assert m["measured_on"] == 5800  # all but the held-out queries
    # every registry candidate was measured on the sample; the winner was the fastest reaching the target
    tried = [c for c in m["candidates"] if c["kind"] != "flat"]
    expected = sum(len(INDEX_KINDS[k].candidates(IndexConfig(kind=k), 6000, DIM)) for k in INDEX_KINDS
                   if k != "flat")
    assert len(tried) == expected and {c["kind"] for c in tried} == {"ivf_flat", "hnsw"}  # no PQ for ip
    winner = max((c for c in tried if c["reached"]), key=lambda c: c["qps"])
    assert winner["kind"] == index.kind
    for c in tried:
        assert c["n"] == 2000 and (not c["reached"] or c["recall"] >= 0.9)
    # the held-out vectors were added back: every id is searchable, and the search default is the measured one
    assert index.count == 6000 and sorted(index.ids.tolist()) == IDS.tolist()
    param = INDEX_KINDS[index.kind].search.name
    assert getattr(index.config, param) == m["search"][param]
    assert fresh_recall(index, items, IDS) >= 0.9 - 0.05  # the measurement holds on new queries


def test_auto_keeps_exact_search_when_nothing_is_fast_enough(items):
    settings = AutoSettings(target_recall=0.9, sample=2000, queries=100, repeats=1, min_speedup=1e9)
    index = build_auto(items, IDS, IndexConfig(), settings)
    assert index.kind == "flat" and index.count == 6000
    m = index.measured
    assert m["chosen"] == "flat" and m["recall"] == 1.0 and m["speedup"] == 1.0 and m["search"] == {}
    np.testing.assert_array_equal(index.ids, IDS)


def test_auto_falls_back_when_the_full_index_misses_the_target(items, monkeypatch):
    import recbert.index.auto as auto

    real = auto._sweep

    def sample_passes_full_fails(index, q, truth, settings, *, start, **timing):
        m = real(index, q, truth, settings, start=start, **timing)
        if start is not None:  # the full-size sweep
            return auto.Measurement(**{**m.as_dict(), "reached": False, "recall": 0.5})
        return m

    monkeypatch.setattr(auto, "_sweep", sample_passes_full_fails)
    settings = AutoSettings(target_recall=0.9, sample=2000, queries=100, repeats=1, min_speedup=1e-9,
                            kinds=("flat", "hnsw"))
    index = build_auto(items, IDS, IndexConfig(), settings)
    assert index.kind == "flat" and "fell back to exact search" in index.measured["note"]


def test_auto_with_given_queries_and_no_sampling(items):
    users = mixture(150, seed=5)
    settings = AutoSettings(target_recall=0.95, sample=10_000, queries=100, repeats=1, min_speedup=1e-9,
                            kinds=("hnsw",))
    index = build_auto(items, IDS, IndexConfig(metric="cosine"), settings, queries=users)
    assert {c["kind"] for c in index.measured["candidates"]} == {"flat", "hnsw"}
    m = index.measured
    assert index.kind == "hnsw" and m["queries_from"] == "given queries" and m["queries"] == 100
    assert m["sample"] == 6000 and m["measured_on"] == 6000 and m["recall"] >= 0.95
    np.testing.assert_array_equal(index.ids, IDS)  # built once, on every vector, with the real ids
    truth = IDS[exact_neighbours(items / np.linalg.norm(items, axis=1, keepdims=True),
                                 users / np.linalg.norm(users, axis=1, keepdims=True), 10, "cosine")]
    assert recall_at_k(index.search(users, 10)[1], truth, 10) >= 0.95 - 0.05


def test_ip_to_l2_candidates_take_the_largest_norm_of_every_vector(items):
    x = items.copy()
    x[7] *= 10  # the largest norm: if it is held out, adding it back must still fit the reduction
    settings = AutoSettings(target_recall=0.8, sample=2000, queries=1000, repeats=1, min_speedup=1e-9,
                            kinds=("hnsw",), seed=3)
    index = build_auto(x, IDS, IndexConfig(), settings)
    assert index.count == 6000
    norms = np.linalg.norm(x, axis=1)
    for c in index.measured["candidates"]:
        if c["changes"].get("ip_to_l2"):
            assert c["changes"]["max_norm"] == pytest.approx(norms.max(), rel=1e-5)


def test_auto_settings_and_inputs_are_checked(items):
    for bad in ({"target_recall": 0}, {"target_recall": 1.5}, {"k": 0}, {"repeats": 0}, {"sample": 1.5},
                {"min_speedup": 0}, {"kinds": ("nope",)}):
        with pytest.raises(IndexConfigError):
            AutoSettings(**bad)
    with pytest.raises(IndexInputError, match="too few"):
        build_auto(items[:3], np.arange(3), settings=AutoSettings(k=1))
    with pytest.raises(IndexInputError, match="dimension"):
        build_auto(items, IDS, queries=np.zeros((5, 3), dtype=np.float32))


def test_measured_fields_round_trip_through_the_sidecar(tmp_path, items):
    settings = AutoSettings(target_recall=0.9, sample=2000, queries=100, repeats=2, min_speedup=1e-9,
                            kinds=("flat", "ivf_flat"))
    index = build_auto(items, IDS, IndexConfig(), settings)
    out = index.save(tmp_path / "idx")
    sidecar = json.loads((out / "index.json").read_text())
    assert sidecar["measured"] == index.measured
    loaded = VectorIndex.load(out, device="cpu")
    assert loaded.measured == index.measured and loaded.config.nprobe == index.measured["search"]["nprobe"]
    plain = VectorIndex.build(items, IDS)
    assert plain.measured is None
    assert VectorIndex.load(plain.save(tmp_path / "plain"), device="cpu").measured is None
    with pytest.raises(IndexInputError, match="JSON"):
        plain.set_measured({"x": object()})


def write_embeddings(path, ids, vectors, id_column="item_id"):
    table = pa.table({id_column: pa.array(ids),
                      "embedding": pa.array(list(vectors), type=pa.list_(pa.float32(), vectors.shape[1]))})
    pq.write_table(table, path)


def test_cli_index_build_kind_auto(tmp_path, items, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    write_embeddings(tmp_path / "items.parquet", IDS, items)
    write_embeddings(tmp_path / "users.parquet", np.arange(120), mixture(120, seed=8), "user_id")
    args = ["index", "build", "--embeddings", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "idx"),
            "--kind", "auto", "--target-recall", "0.9", "--auto-sample", "3000", "--auto-queries", "100",
            "--queries", str(tmp_path / "users.parquet")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "auto: chose" in out and "measured: recall@10" in out
    loaded = VectorIndex.load(tmp_path / "idx", device="cpu")
    assert loaded.measured["recall"] >= 0.9 or loaded.kind == "flat"
    assert loaded.source["queries_path"] == str(tmp_path / "users.parquet")
    run = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("recbert-retrieval").experiment_id])[0]
    assert run.data.params["index.kind"] == "auto" and run.data.params["auto.target_recall"] == "0.9"
    assert run.data.tags["recbert.index_kind"] == loaded.kind
    assert run.data.metrics["auto_recall"] == pytest.approx(loaded.measured["recall"])
    # an existing output is refused before minutes of measuring; --queries needs --kind auto
    assert main(args) != 0
    assert "already exists" in capsys.readouterr().err
    assert main(["index", "build", "--embeddings", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "x"),
                 "--queries", str(tmp_path / "users.parquet")]) != 0


def test_ivf_candidates_train_enough_vectors_for_their_cells():
    ivf = INDEX_KINDS["ivf_flat"].candidates
    big = ivf(IndexConfig(kind="ivf_flat"), 1_000_000, 64)
    # 4 and 8 cells per sqrt(n), each on inner-product cells and on the MIPS reduction
    assert [(c["nlist_factor"], c.get("ip_to_l2", False)) for c in big] == [
        (4, False), (4, True), (8, False), (8, True)]
    assert [c["train_sample"] for c in big] == [200_000, 200_000, 400_000, 400_000]
    assert [IndexConfig(kind="ivf_flat", **c).resolved_nlist(1_000_000) for c in big] == [4000, 4000, 8000, 8000]
    # 4,000 and 8,000 cells: the exact quantizer (faster than the HNSW graph there, and exact cells)
    assert [c["quantizer"] for c in big] == ["flat"] * 4
    # few vectors: both factors clip to the cells 39 training vectors each allow; tried once
    small = ivf(IndexConfig(kind="ivf_flat", metric="cosine"), 5_000, 16)
    assert small == ({"quantizer": "flat", "nlist_factor": 4, "train_sample": 5_000},)
    assert IndexConfig(kind="ivf_flat", **small[0]).resolved_nlist(5_000) == 128
    with pytest.raises(IndexConfigError, match="nlist_factor"):
        IndexConfig(kind="ivf_flat", nlist_factor=0)


def test_the_coarse_quantizer_is_exact_until_the_graph_pays():
    assert coarse_quantizer_for(4_000) == "flat"
    assert coarse_quantizer_for(FLAT_QUANTIZER_MAX_CELLS) == "flat"
    assert coarse_quantizer_for(FLAT_QUANTIZER_MAX_CELLS + 1) == "hnsw"
    # auto's candidates follow the cells 4 and 8 * sqrt(n) give: exact at 10M (12,649 and
    # 25,298 cells), the graph only when the cells outgrow the limit
    ivf, fs = INDEX_KINDS["ivf_flat"].candidates, INDEX_KINDS["ivf_pq_fs"].candidates
    assert {c["quantizer"] for c in ivf(IndexConfig(kind="ivf_flat"), 10_000_000, 64)} == {"flat"}
    huge = ivf(IndexConfig(kind="ivf_flat"), 100_000_000, 64)
    assert IndexConfig(kind="ivf_flat", **huge[0]).resolved_nlist(100_000_000) == 40_000
    assert {c["quantizer"] for c in huge} == {"hnsw"}
    many = IndexConfig(kind="ivf_pq_fs", metric="l2", nlist=40_000, train_sample=2_000_000)
    assert fs(many, 100_000_000, 64)[0]["quantizer"] == "hnsw"
    assert fs(IndexConfig(kind="ivf_pq_fs", metric="l2"), 10_000_000, 64)[0]["quantizer"] == "flat"

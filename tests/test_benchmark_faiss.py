"""benchmarks/faiss_index.py: the grid, medians, the Pareto table, --auto, and the refusal
to time on a busy machine (tiny sizes: this checks the plumbing, not the figures)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("faiss_bench", ROOT / "benchmarks" / "faiss_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_prints_the_grid_the_front_and_the_auto_choice(bench, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    bench.main(["--n", "3000", "--dim", "16", "--queries", "200", "--sweep-queries", "100", "--centres", "32",
                "--repeats", "2", "--rounds", "3", "--single-queries", "10", "--index", "flat",
                "--index", "hnsw:hnsw_m=16,ef_construction=100", "--index", "ivf_pq_fs:rerank=10",
                "--auto", "--auto-sample", "1000", "--plot", str(tmp_path / "curve.png"),
                "--allow-busy"])  # other tests may run beside: the interval may be busy
    out = capsys.readouterr().out
    assert "median of 2 runs per QPS" in out and "load average at start 0.00" in out
    assert "| flat      | exact" in out and "| hnsw      | M=16, efC=100, ef_search=" in out
    assert "| ivf_pq_fs | nlist=" in out and "PQ8x4fs, re-rank 10k" in out
    # the IVF row times its coarse quantizer alone; other kinds have none
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
             if line.startswith("| ") and line.count("|") == 12}
    assert table["hnsw"][-1] == table["flat"][-1] == "-" and float(table["ivf_pq_fs"][-1]) > 0
    # each approximate row's speed-up is the median ratio of its rounds paired with exact search
    paired = [line for line in out.splitlines() if "3 paired rounds, exact / this QPS" in line]
    assert len(paired) == 2 and all(line.count(" / ") == 1 + 3 for line in paired)  # header + 3 rounds
    assert table["hnsw"][-2] == paired[0].rsplit("median ratio ", 1)[1]
    assert table["flat"][-2] == "1.0x"
    assert "Pareto front of the sweeps" in out and "machine: load average 0.00 before" in out
    assert "--kind auto:" in out and "auto: chose" in out
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_a_busy_machine_is_refused_unless_allowed(bench, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 1.0))
    with pytest.raises(SystemExit, match="refusing to time on a busy machine: load average 1.70"):
        bench.main(["--n", "500", "--dim", "8", "--queries", "20", "--index", "flat", "--wait-idle", "0"])
    bench.main(["--n", "500", "--dim", "8", "--queries", "20", "--index", "flat", "--allow-busy",
                "--repeats", "1", "--single-queries", "5"])
    assert "BUSY" in capsys.readouterr().out


def test_index_specs_are_checked(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--index", "hnsw:nope=3"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--index", "tree"])
    cfg = bench.parse_args(["--index", "ivf_flat:quantizer=hnsw,nlist=64"]).configs[0]
    assert cfg.kind == "ivf_flat" and cfg.quantizer == "hnsw" and cfg.nlist == 64 and cfg.device == "cpu"

"""The quality benchmark's --data path runs the recipe on any S3-Rec-format file with
the attributes beside it, per seed, and its pretraining comparison prints paired
differences (tiny settings: this checks the plumbing, not the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_s3rec(folder: Path, n_users: int = 60, n_items: int = 30) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, n_users + 1):
        start = int(rng.integers(n_items))
        lines.append(" ".join(map(str, [u, *((start + np.arange(int(rng.integers(4, 9)))) % n_items + 1)])))
    data = folder / "Tiny.txt"
    data.write_text("\n".join(lines) + "\n")
    (folder / "Tiny_item2attributes.json").write_text(json.dumps({str(i): [i % 4 + 1] for i in range(1, n_items + 1)}))
    return data


def test_quality_benchmark_runs_the_recipe_on_any_s3rec_file_and_compares_pretraining(tmp_path):
    data = write_s3rec(tmp_path)
    small = ["model.hidden=16", "model.intermediate=32", "model.max_len=10", "pretrain.epochs=2",
             "pretrain.max_minutes=1", "train.epochs=2", "train.max_minutes=1", "train.eval_every=1",
             "tracking.enabled=false", f"out_dir={tmp_path / 'runs'}", "threads=1"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", str(data), "--seeds", "0,1",
           "--compare-pretraining", "--work", str(tmp_path / "work"), *[a for s in small for a in ("--set", s)]]
    env = {**os.environ, "RECBERT_ALLOCATOR": "system"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert (tmp_path / "work").is_dir() and any((p / "items.parquet").is_file() for p in (tmp_path / "work").iterdir())
    for variant in ("pretrained", "next-item only"):
        assert f"### {variant}" in out
    # the recipe pretrains with the attribute objective and refits
    assert "pretrain 2 ep" in out and "refit_train" in out and "refit_pretrain" not in out
    assert "test of the validation-selected model, before the refit" in out
    diff_rows = [line for line in out.splitlines() if line.startswith("| test/unseen/ndcg@10 |")]
    assert len(diff_rows) == 1 and " ± " in diff_rows[0]
    assert "| metric | next-item only | pretrained | difference (candidate - baseline) |" in out
    assert sum(line.startswith("| val | ") for line in out.splitlines()) == 1  # the selecting stages' best
    # the next-item-only variant got the pretrained variant's whole budget (1 + 1 minutes)
    assert out.count("next-item only, seed") == 2


def test_compare_pretraining_refuses_a_config_without_pretraining(tmp_path):
    data = write_s3rec(tmp_path, n_users=10)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", str(data), "--compare-pretraining",
           "--work", str(tmp_path / "work"), "--set", "pretrain.epochs=0", "--set", "tracking.enabled=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "RECBERT_ALLOCATOR": "system"})
    assert done.returncode != 0 and "pretrain.epochs = 0: add e.g. --set pretrain.epochs=40" in done.stderr

"""The peer benchmark (benchmarks/peers.py, benchmarks/peers/): its peers' ranks are
recbert's, and its report reads the children's results. The peers themselves need their
own virtualenv (benchmarks/peers/setup.sh) and are not run here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

from recbert.evaluation.metrics import ranking_metrics
from recbert.evaluation.ranking import target_ranks

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_peer_ranks_and_metrics_are_recberts() -> None:
    common = load(BENCHMARKS / "peers" / "common.py")
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 30), generator=gen).float()  # many ties
    targets = torch.randint(0, 30, (64,), generator=gen)
    seen = torch.rand(64, 30, generator=gen) < 0.2
    seen[:8, :] = False
    seen[torch.arange(8, 12), targets[8:12]] = True  # targets in the history: misses under unseen
    ours = common.tie_aware_ranks(scores.clone(), targets, seen)
    theirs = target_ranks(scores, targets, seen, 0, torch.Generator())
    for name in ("all", "unseen"):
        np.testing.assert_allclose(ours[name], theirs[name].numpy())
        want = ranking_metrics(theirs[name].numpy(), [10])
        assert common.metrics(ours[name]) == {k: want[k] for k in ("ndcg@10", "hr@10")}


def result(system: str, seconds: float, ndcg: float) -> dict:
    return {"system": system, "version": "1", "allocator": "glibc malloc", "threads": 2, "torch": "2",
            "epoch_seconds": [seconds, seconds], "sequences_per_epoch": 100, "targets_per_epoch": 400,
            "sequence_unit": "unit", "notes": "note", "prep_seconds": 1.0, "eval_seconds": 1.0,
            "metrics": {p: {"ndcg@10": ndcg, "hr@10": 2 * ndcg} for p in ("all", "unseen")}}


def test_report_table_and_ratios() -> None:
    peers = load(BENCHMARKS / "peers.py")
    runs = [peers.Run("recbert", result("recbert", 10.0, 0.04), 1000.0, 30.0),
            peers.Run("recbole", result("recbole", 40.0, 0.02), 2000.0, 90.0),
            peers.Run("rectools", None, 0.0, 0.0, "not run: not installed")]
    text = peers.report(runs, 300, "Beauty", ["before recbole (load 1.5): pid 1 90% CPU: x"])
    assert "| recbert | 1 | glibc malloc | 2 | 2 | 10.0 | 10 | 40 | 0.0400 |" in text
    assert "| recbole | 0.25 | 4.00 | 4.00 | 2.00 | 2.00 | 2.00 | 2.00 | 0.50 |" in text
    assert "- rectools: not run: not installed" in text
    assert "WARNING: before recbole" in text

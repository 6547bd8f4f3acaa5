"""What the peer scripts (``recbole_sasrec.py``, ``rectools_sasrec.py``) share. They run
in the peer virtualenv (``setup.sh``), never in recbert's: numpy, torch and the standard
library only, no recbert import.

The result of a run is one JSON line on stdout that starts with ``RESULT_MARK``; the
driver (``benchmarks/peers.py``) reads it. Metrics follow recbert's definitions
(``recbert.evaluation.metrics``): a 0-based rank per test user, NDCG@k = 1/log2(rank + 2)
and HR@k = rank < k, a miss when the target is not ranked. Protocols: ``all`` ranks the
target against every item; ``unseen`` first removes the items of the user's input history,
and a target that is itself in the history is then a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

RESULT_MARK = "PEER_RESULT "
BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "beauty" / "Beauty.txt"
K = 10


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--budget-seconds", type=float, default=300.0, help="training wall budget (default 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--data", type=Path, default=BEAUTY, help="S3-Rec format file (default: shared Beauty.txt)")
    return ap.parse_args()


def read_s3rec(path: Path) -> list[tuple[str, list[str]]]:
    """``(user, items in time order)`` per line of an S3-Rec file."""
    rows = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if len(tokens) >= 2:
            rows.append((tokens[0], tokens[1:]))
    return rows


def train_for_budget(run_epoch: Callable[[int], object], budget_seconds: float) -> list[float]:
    """Run ``run_epoch(epoch)`` (1-based) until the epoch that crosses the budget has
    ended; the seconds of each epoch."""
    seconds: list[float] = []
    started = time.perf_counter()
    while not seconds or time.perf_counter() - started <= budget_seconds:
        t0 = time.perf_counter()
        run_epoch(len(seconds) + 1)
        seconds.append(time.perf_counter() - t0)
        print(f"epoch {len(seconds)}: {seconds[-1]:.1f} s", file=sys.stderr, flush=True)
    return seconds


def tie_aware_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> dict[str, np.ndarray]:
    """0-based ranks of ``targets`` (``[B]`` column indices of ``scores`` ``[B, n]``) under
    ``all`` and ``unseen`` (``seen`` ``[B, n]`` bool: the history). Items above the target
    count 1 and other items tied with it 1/2, as recbert counts them; a target in the
    history is a miss (rank n) under ``unseen``. Columns scored -inf (padding) never
    count."""
    target = scores.gather(1, targets[:, None])
    above, tied = scores > target, scores == target
    tied.scatter_(1, targets[:, None], False)
    ranks = {"all": above.sum(1) + 0.5 * tied.sum(1),
             "unseen": (above & ~seen).sum(1) + 0.5 * (tied & ~seen).sum(1)}
    out = {name: r.double().numpy() for name, r in ranks.items()}
    out["unseen"][seen.gather(1, targets[:, None])[:, 0].numpy()] = scores.shape[1]
    return out


def metrics(ranks: np.ndarray, k: int = K) -> dict[str, float]:
    hit = ranks < k
    return {f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()),
            f"hr@{k}": float(hit.mean())}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocator() -> str:
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def emit(result: dict[str, Any]) -> None:
    """Print the run's JSON line for the driver (the common fields are filled in here)."""
    seconds = result["epoch_seconds"]
    mean = sum(seconds) / len(seconds)
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), allocator=allocator(),
                  epochs=len(seconds), train_seconds=sum(seconds), mean_epoch_seconds=mean,
                  sequences_per_second=result["sequences_per_epoch"] / mean,
                  targets_per_second=result["targets_per_epoch"] / mean, peak_rss_mib=peak_rss_mib())
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()

"""Quality benchmark: train with a run config on a real dataset and print the
test metrics under both full-ranking protocols, with wall time and peak RSS.

    .venv/bin/python benchmarks/quality.py beauty      [--set key=value ...]
    .venv/bin/python benchmarks/quality.py ml-100k     [--set key=value ...]

Datasets are imported from ../shared/data into build/ on first use.
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbert.jobs.train import run_training  # noqa: E402
from recbert.config import RunConfig  # noqa: E402
from recbert.allocator import allocator_name, reexec_with_fast_allocator  # noqa: E402
from recbert.data.importers import import_movielens_100k, import_s3rec  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "beauty": (ROOT / "configs" / "beauty.toml", ROOT / "build" / "beauty"),
    "ml-100k": (ROOT / "configs" / "ml-100k.toml", ROOT / "build" / "ml-100k"),
}


def ensure_imported(name: str, out: Path) -> None:
    if (out / "events.parquet").is_file():
        return
    if name == "beauty":
        import_s3rec(SHARED / "beauty" / "Beauty.txt", out, SHARED / "beauty" / "Beauty_item2attributes.json")
    else:
        import_movielens_100k(SHARED / "ml-100k", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config_path, data_dir = DATASETS[args.dataset]
    ensure_imported(args.dataset, data_dir)
    cfg = RunConfig.load(config_path, [f"data.events={data_dir / 'events.parquet'}", *args.overrides])
    started = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - started
    m = result.test_metrics
    print(f"\n## {args.dataset}: {datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {allocator_name()}")
    print(f"command: .venv/bin/python benchmarks/quality.py {args.dataset} "
          + " ".join(f"--set {o}" for o in args.overrides))
    print(f"config: {config_path.relative_to(ROOT)}, seed {cfg.seed}; MLflow run {result.run_id}")
    for stage in result.stages:
        print(f"stage {stage.name}: {stage.epochs_run} epochs ({stage.stopped}), best val epoch {stage.best_epoch}, "
              f"{stage.train_seconds / max(stage.epochs_run, 1):.1f} s/epoch training, {stage.seconds / 60:.1f} min "
              "with validation")
    print(f"wall time {wall / 60:.1f} min; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")
    print("| protocol | HR@1 | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in ("all", "unseen", "sampled"):
        if f"test/{p}/mrr" not in m:
            continue
        cells = [m[f"test/{p}/{k}"] for k in ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]
        print(f"| {p} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    reexec_with_fast_allocator()  # under jemalloc when installed, as the CLI runs (recbert.allocator)
    main()

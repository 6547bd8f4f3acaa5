"""Speed benchmark on Amazon Beauty (22,363 users, 12,101 items): seconds per
training epoch for each objective, sequences/s, full-ranking evaluation time
for all users, and peak RSS. Model: hidden 64, 2 layers, 2 heads, max_len 50.

    .venv/bin/python benchmarks/speed.py [--epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbert.data.prepare import prepare_data  # noqa: E402
from recbert.jobs.train import build_model  # noqa: E402
from recbert.allocator import allocator_name, reexec_with_fast_allocator  # noqa: E402
from recbert.runtime import seed_everything  # noqa: E402
from recbert.config import RunConfig  # noqa: E402
from recbert.data.importers import import_s3rec  # noqa: E402
from recbert.evaluation.ranking import evaluate_ranking  # noqa: E402
from recbert.training.trainer import train_stage  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--objectives", default="next_item,mlm")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        import_s3rec(SHARED / "Beauty.txt", Path(tmp) / "beauty", SHARED / "Beauty_item2attributes.json")
        rows = []
        for objective in args.objectives.split(","):
            cfg = RunConfig.load(None, [
                f"data.events={tmp}/beauty/events.parquet", "model.hidden=64", "model.layers=2", "model.heads=2",
                "model.max_len=50", "model.dropout=0.5", "model.attention_dropout=0.5",
                f"train.objective={objective}", f"train.epochs={args.epochs}", "train.batch_size=256",
                "train.eval_every=1000", "tracking.enabled=false"])
            seed_everything(0)
            t0 = time.perf_counter()
            vocab, splits = prepare_data(cfg)
            prep = time.perf_counter() - t0
            model = build_model(cfg, vocab)
            res = train_stage(model, splits, cfg.train, cfg.eval, seed=0)
            epochs = [h["train/epoch_seconds"] for h in res.history]
            seqs = res.sequences / res.epochs_run
            rows.append((objective, prep, epochs, seqs / (sum(epochs) / len(epochs))))
        evals = []
        for _ in range(3):
            t0 = time.perf_counter()
            m = evaluate_ranking(model, splits.test, dataclasses.replace(cfg.eval, sampled_negatives=0))
            evals.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate_ranking(model, splits.test, dataclasses.replace(cfg.eval, sampled_negatives=100))
        eval_sampled = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {allocator_name()}")
    print(f"data: {len(splits.train)} training sequences, {vocab.n_items} items, {int(m['n_users'])} test users\n")
    print("| objective | data prep s | epoch s (each) | mean epoch s | sequences/s |")
    print("|---|---|---|---|---|")
    for objective, prep, epochs, sps in rows:
        print(f"| {objective} | {prep:.1f} | {', '.join(f'{e:.1f}' for e in epochs)} | {sum(epochs) / len(epochs):.1f} | {sps:.0f} |")
    print(f"\nfull-ranking evaluation, {int(m['n_users'])} users x {vocab.n_items} items, all+unseen protocols: "
          f"{', '.join(f'{e:.2f}' for e in evals)} s (best {min(evals):.2f} s); with 100 sampled negatives too: {eval_sampled:.2f} s")
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    reexec_with_fast_allocator()  # under jemalloc when installed, as the CLI runs (recbert.allocator)
    main()

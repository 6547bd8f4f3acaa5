"""Scale benchmark: a generated log (Zipf popularity, sessions, a learnable successor
pattern) of N events over a catalogue of M items -> sequences -> one next-item
training epoch with a sampled loss -> chunked full-ranking evaluation of a user sample,
with events/s, sequences/s, users/s, peak RSS and the recall of the learnable pattern.

    .venv/bin/python benchmarks/scale.py --events 10000000 --items 1000000
    .venv/bin/python benchmarks/scale.py --events 1000000 --items 100000 --loss gbce
    .venv/bin/python benchmarks/scale.py --events 10000000 --items 1000000 --shards  # streamed from disk

The log is generated once into build/synth-<events>-<items>-<seed>/ and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbert.config import RunConfig  # noqa: E402
from recbert.data.generate import GeneratorConfig, generate_events, load_successors  # noqa: E402
from recbert.data.prepare import prepare_data  # noqa: E402
from recbert.data.sequences import EvalSet  # noqa: E402
from recbert.evaluation.ranking import evaluate_ranking  # noqa: E402
from recbert.jobs.train import build_model  # noqa: E402
from recbert.allocator import allocator_name, reexec_with_fast_allocator  # noqa: E402
from recbert.runtime import seed_everything  # noqa: E402
from recbert.training.trainer import train_stage  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample(eval_set: EvalSet, n: int, seed: int) -> EvalSet:
    if n >= len(eval_set):
        return eval_set
    idx = np.sort(np.random.default_rng(seed).choice(len(eval_set), n, replace=False))
    return EvalSet(eval_set.inputs.select(idx), eval_set.targets[idx])


def pattern_targets(eval_set: EvalSet, vocab, successor: np.ndarray) -> np.ndarray:
    """Users whose held-out item is the successor of their last history item."""
    last = eval_set.inputs.items[eval_set.inputs.offsets[1:] - 1]
    last_id = vocab.decode(last)
    target_id = vocab.decode(eval_set.targets)
    ok = vocab.is_item(last) & vocab.is_item(eval_set.targets) & (eval_set.inputs.lengths > 0)
    ids = np.asarray(last_id, dtype=np.int64)
    return ok & (successor[np.clip(ids, 0, len(successor) - 1)] == np.asarray(target_id, dtype=np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", default="sampled_softmax", help="train.loss (sampled_softmax, gbce, full_softmax)")
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-users", type=int, default=10_000, help="test users ranked against every item")
    ap.add_argument("--shards", action="store_true",
                    help="stream training from sequence shards (data.shards) instead of holding the sequences")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    load = os.getloadavg()[0]
    folder = ROOT / "build" / f"synth-{args.events}-{args.items}-{args.seed}"
    t0 = time.perf_counter()
    if not (folder / "generator.json").is_file():
        meta = generate_events(folder, GeneratorConfig(n_events=args.events, n_items=args.items, seed=args.seed))
        gen_s = time.perf_counter() - t0
        print(f"generated {meta['n_events']:,} events in {gen_s:.1f} s ({meta['n_events'] / gen_s:,.0f} events/s), "
              f"pattern share {meta['pattern']['share_of_pairs']:.3f}")
    cfg = RunConfig.load(None, [
        f"data.events={folder / 'events'}", "data.split=leave_one_out", "model.hidden=64", "model.layers=2",
        "model.heads=2", "model.max_len=50", "model.dropout=0.2", "model.attention_dropout=0.2",
        "train.objective=next_item", f"train.loss={args.loss}", f"train.negatives={args.negatives}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.warmup_ratio=0.0",
        "train.schedule=constant", "eval.sampled_negatives=0", "eval.ks=[10]", "eval.select_metric=hr@10",
        "tracking.enabled=false", *args.overrides,
        *([f"data.shards={ROOT / 'build' / f'shards-{args.events}-{args.items}-{args.seed}'}"] if args.shards else [])])
    seed_everything(args.seed)
    t0 = time.perf_counter()
    vocab, splits = prepare_data(cfg)
    prep_s = time.perf_counter() - t0
    n_events = splits.train.n_events if args.shards else int(splits.train.items.size) + 2 * len(splits.test)
    rss_prep = peak_rss_mib()
    model = build_model(cfg, vocab)
    # validation on a small sample keeps early stopping meaningful and cheap
    small = dataclasses.replace(splits, val=sample(splits.val, 2000, args.seed))
    res = train_stage(model, small, cfg.train, cfg.eval, seed=args.seed)
    train_s = res.train_seconds
    rss_train = peak_rss_mib()
    test = sample(splits.test, args.eval_users, args.seed + 1)
    t0 = time.perf_counter()
    metrics = evaluate_ranking(model, test, cfg.eval)
    eval_s = time.perf_counter() - t0
    successor = load_successors(folder)
    on_pattern = pattern_targets(test, vocab, successor)
    pattern = None
    if on_pattern.any():
        sub = EvalSet(test.inputs.select(np.flatnonzero(on_pattern)), test.targets[on_pattern])
        pattern = evaluate_ranking(model, sub, cfg.eval)["all/hr@10"]
    print(f"\n## scale: {args.events:,} events x {args.items:,} items, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {torch.get_num_threads()} torch threads, {allocator_name()}, "
          f"load average before {load:.2f}")
    print(f"command: .venv/bin/python benchmarks/scale.py --events {args.events} --items {args.items} "
          f"--loss {args.loss} --negatives {args.negatives} --epochs {args.epochs} --eval-users {args.eval_users}"
          + (" --shards" if args.shards else "") + "".join(f" --set {o}" for o in args.overrides))
    print(f"data: {n_events:,} events, {len(splits.train):,} train sequences{' (streamed shards)' if args.shards else ''}, {vocab.n_items:,} items; "
          f"events -> splits {prep_s:.1f} s ({n_events / prep_s:,.0f} events/s), peak RSS {rss_prep:,.0f} MiB")
    print(f"training: {res.epochs_run} epoch(s), {train_s / max(res.epochs_run, 1):.1f} s/epoch, "
          f"{res.sequences / max(train_s, 1e-9):,.0f} sequences/s, peak RSS {rss_train:,.0f} MiB")
    print(f"evaluation: {len(test):,} users x {vocab.n_items:,} items in {eval_s:.1f} s "
          f"({len(test) / eval_s:,.0f} users/s); HR@10 {metrics['all/hr@10']:.4f}, NDCG@10 {metrics['all/ndcg@10']:.4f}")
    if pattern is not None:
        print(f"learnable pattern: {int(on_pattern.sum()):,} test targets are the successor of the last item; "
              f"recall@10 on them {pattern:.4f}")
    print(f"peak RSS {peak_rss_mib():,.0f} MiB; load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    reexec_with_fast_allocator()  # under jemalloc when installed, as the CLI runs (recbert.allocator)
    main()

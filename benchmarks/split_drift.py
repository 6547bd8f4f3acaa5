"""Why validation scores run above test scores under leave-one-out: how far the
validation and test targets are from the training items, for any S3-Rec-format file.

    .venv/bin/python benchmarks/split_drift.py --data ../shared/data/beauty/Beauty.txt

Prints, for the validation and the test targets: the share that repeat an item of the
user's history (the `unseen` protocol can never hit those), the share never seen in
training, their training frequency (median, share under 5), the correlation of per-item
target counts with training counts, and the hit rate of a most-popular top-10 list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import attributes_beside, import_s3rec_file, run_overrides  # noqa: E402
from recbert.config import RunConfig  # noqa: E402
from recbert.data.prepare import prepare_data  # noqa: E402
from recbert.data.sequences import EvalSet  # noqa: E402


def repeats_history(part: EvalSet) -> float:
    return float(np.mean([t in set(part.inputs.row(u).tolist()) for u, t in enumerate(part.targets)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "beauty" / "Beauty.txt")
    args = ap.parse_args()
    data_dir = import_s3rec_file(args.data, attributes_beside(args.data))
    vocab, splits = prepare_data(RunConfig.load(None, run_overrides(data_dir)[:1]))
    n = len(vocab)
    train = np.bincount(splits.train.items, minlength=n)
    counts = {p: np.bincount(getattr(splits, p).targets, minlength=n) for p in ("val", "test")}
    top10 = np.argsort(-train)[:10]
    print(f"{args.data}: {len(splits.test)} evaluated users, {vocab.n_items} items\n")
    print("| targets | repeat a history item | unseen in training | median training count | "
          "training count < 5 | corr(item counts, training) | corr(with val) | popular top-10 HR |")
    print("|---|---|---|---|---|---|---|---|")
    for p in ("val", "test"):
        part = getattr(splits, p)
        c = train[part.targets]
        corr_val = np.corrcoef(counts[p], counts["val"])[0, 1]
        print(f"| {p} | {repeats_history(part):.4f} | {np.mean(c == 0):.4f} | {np.median(c):.0f} | "
              f"{np.mean(c < 5):.3f} | {np.corrcoef(counts[p], train)[0, 1]:.3f} | {corr_val:.3f} | "
              f"{np.mean(np.isin(part.targets, top10)):.4f} |")


if __name__ == "__main__":
    main()

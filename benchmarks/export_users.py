"""Export throughput: user embeddings for many generated users, streamed to parquet.

Generates ``--users`` users with 5..50 events over the catalogue of a trained
model (or a fresh model of the benchmark size when no --model-dir is given),
then times ``export_users`` (encode + write) and reports users/s and peak RSS.

    .venv/bin/python benchmarks/export_users.py --users 1000000 [--model-dir runs/<id>]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbert.config import ModelConfig  # noqa: E402
from recbert.data.sequences import Sequences  # noqa: E402
from recbert.data.vocab import N_SPECIAL, ItemVocab  # noqa: E402
from recbert.exports.embeddings import export_users  # noqa: E402
from recbert.model.recommender import SequenceRecommender  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model_dir:
        model = SequenceRecommender.from_pretrained(args.model_dir)
    else:
        vocab = ItemVocab(np.arange(12101))
        model = SequenceRecommender(ModelConfig(n_tokens=len(vocab), attention="causal"))
        model.vocab = vocab
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(5, 51, args.users)
    offsets = np.zeros(args.users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = rng.integers(N_SPECIAL, model.config.n_tokens, offsets[-1])
    seqs = Sequences(np.arange(args.users), items, offsets)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "users.parquet"
        t0 = time.perf_counter()
        n = export_users(model, seqs, out, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        size = out.stat().st_size / 2**20
        rows = pq.ParquetFile(out).metadata.num_rows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} users ({offsets[-1]:,} events, mean length {lengths.mean():.1f}), model hidden "
          f"{model.config.hidden}, {model.config.layers} layers, {torch.get_num_threads()} torch threads")
    print(f"export: {seconds:.1f} s = {n / seconds:,.0f} users/s; parquet {size:.0f} MiB, {rows:,} rows")
    print(f"peak RSS {rss:.0f} MiB (before export {rss_before:.0f} MiB: the generated sequences)")


if __name__ == "__main__":
    main()

"""Quality benchmark: train a run config on a real dataset, once per seed, and print the
test metrics under both full-ranking protocols per seed and as mean +/- std, with wall
time and peak RSS.

    .venv/bin/python benchmarks/quality.py --data FILE [--attributes JSON] [--seeds 0,1,2] [--set key=value ...]
    .venv/bin/python benchmarks/quality.py beauty      [--seeds 0,1,2] [--set key=value ...]
    .venv/bin/python benchmarks/quality.py ml-100k     [--set key=value ...]
    .venv/bin/python benchmarks/quality.py beauty --compare-pretraining --seeds 0,1,2 --set pretrain.epochs=40

``--compare-pretraining`` trains each seed twice: as configured (with its pretraining stage)
and with ``pretrain.epochs = 0`` and ``train.max_minutes`` = the first variant's whole
budget (its pretrain + train ``max_minutes``), then prints the per-seed paired differences
of the best validation and the test metrics with their mean and sample std (the table of
``recbert runs compare``, :mod:`recbert.evaluation.comparison`).

``--data`` takes any file in the S3-Rec format (one user per line: ``user item item ...``
in time order); its ``<name>_item2attributes.json`` beside it is used when present (or
give ``--attributes``). The recipe is ``configs/sequential.toml`` unless ``--config`` says
otherwise: everything in it is selected on validation only. ``beauty`` is the shipped
shortcut for ``--data ../shared/data/beauty/Beauty.txt``. Files are imported into build/
on first use.
"""

from __future__ import annotations

import argparse
import hashlib
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
from recbert.evaluation.comparison import MetricRow, mean_std_text, paired_table, selecting_score  # noqa: E402
from recbert.allocator import allocator_name, reexec_with_fast_allocator  # noqa: E402
from recbert.data.importers import import_movielens_100k, import_s3rec  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SEQUENTIAL = ROOT / "configs" / "sequential.toml"
SHORTCUTS = {"beauty": SHARED / "beauty" / "Beauty.txt"}
PROTOCOLS = ("all", "unseen")
COLUMNS = ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")


def attributes_beside(data: Path) -> Path | None:
    """``Beauty_item2attributes.json`` beside ``Beauty.txt`` (the S3-Rec naming), if there."""
    found = data.with_name(f"{data.stem}_item2attributes.json")
    return found if found.is_file() else None


def import_s3rec_file(data: Path, attributes: Path | None, work: Path = ROOT / "build" / "quality") -> Path:
    """The S3-Rec file (and attributes) imported under ``work``, keyed by path and size, reused."""
    key = hashlib.sha256(f"{data.resolve()}:{data.stat().st_size}:{attributes}".encode()).hexdigest()[:8]
    out = work / f"{data.stem}-{key}"
    if not (out / "events.parquet").is_file():
        import_s3rec(data, out, attributes)
    return out


def run_overrides(data_dir: Path) -> list[str]:
    sets = [f"data.events={data_dir / 'events.parquet'}"]
    if (data_dir / "items.parquet").is_file():
        sets.append(f"data.item_features={data_dir / 'items.parquet'}")
    return sets


def budget_minutes(cfg: RunConfig) -> float:
    """The whole training budget of a config: its stages' ``max_minutes`` (refits excluded)."""
    stages = [s for s in (cfg.pretrain, cfg.train) if s.epochs]
    if any(s.max_minutes is None for s in stages):
        raise SystemExit("--compare-pretraining needs pretrain.max_minutes and train.max_minutes set")
    return sum(s.max_minutes for s in stages)


def table(rows: list[dict[str, float]], prefix: str) -> list[str]:
    out = ["| protocol | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for p in PROTOCOLS:
        if f"{prefix}/{p}/mrr" not in rows[0]:
            continue
        cells = [mean_std_text([r[f"{prefix}/{p}/{c}"] for r in rows]) for c in COLUMNS]
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", choices=sorted([*SHORTCUTS, "ml-100k"]))
    ap.add_argument("--data", type=Path, help="an S3-Rec format file (user item item ... per line)")
    ap.add_argument("--attributes", type=Path, help="its *_item2attributes.json (default: the one beside it)")
    ap.add_argument("--config", type=Path, help="run config (default: configs/sequential.toml; ml-100k's own)")
    ap.add_argument("--seeds", default="42", help="comma-separated seeds, one training run each")
    ap.add_argument("--compare-pretraining", action="store_true",
                    help="each seed with the config's pretraining and without it, same total budget")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "quality", help="where files are imported")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if (args.dataset is None) == (args.data is None):
        ap.error("give a dataset shortcut or --data FILE, not both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.dataset == "ml-100k":
        data_dir, config_path, name = ROOT / "build" / "ml-100k", args.config or ROOT / "configs" / "ml-100k.toml", \
            "ml-100k"
        if not (data_dir / "events.parquet").is_file():
            import_movielens_100k(SHARED / "ml-100k", data_dir)
    else:
        data = args.data or SHORTCUTS[args.dataset]
        attributes = args.attributes or attributes_beside(data)
        data_dir, config_path, name = import_s3rec_file(data, attributes, args.work), args.config or SEQUENTIAL, data.name
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = [*run_overrides(data_dir), *args.overrides]
    variants = {"as configured": []}
    if args.compare_pretraining:
        configured = RunConfig.load(config_path, base)
        if not configured.pretrain.epochs:
            raise SystemExit("--compare-pretraining compares a pretraining stage with none, but this config has "
                             "pretrain.epochs = 0: add e.g. --set pretrain.epochs=40")
        budget = budget_minutes(configured)
        variants = {"pretrained": [], "next-item only": ["pretrain.epochs=0", f"train.max_minutes={budget}"]}
    runs: dict[str, list] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for seed in seeds:
        for variant, extra in variants.items():
            cfg = RunConfig.load(config_path, [*base, f"seed={seed}", *extra])
            started = time.perf_counter()
            result = run_training(cfg)
            walls[variant].append(time.perf_counter() - started)
            runs[variant].append(result)
            stages = "; ".join(f"{s.name} {s.epochs_run} ep (best {s.best_epoch}, {s.stopped}, "
                               f"{s.train_seconds / max(s.epochs_run, 1):.1f} s/ep)" for s in result.stages)
            m = result.test_metrics
            print(f"{variant}, seed {seed}: MLflow run {result.run_id}, {walls[variant][-1] / 60:.1f} min; {stages}; "
                  f"test NDCG@10 unseen {m['test/unseen/ndcg@10']:.4f} all {m['test/all/ndcg@10']:.4f}", flush=True)

    print(f"\n## {name}: {datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {allocator_name()}")
    command = (f"--data {args.data}" if args.data else args.dataset) + \
        (f" --config {args.config}" if args.config else "") + f" --seeds {args.seeds}" + \
        (" --compare-pretraining" if args.compare_pretraining else "") + "".join(f" --set {o}" for o in args.overrides)
    print(f"command: .venv/bin/python benchmarks/quality.py {command}")
    print(f"config: {config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path}; "
          f"seeds {seeds}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for variant, results in runs.items():
        rows = [r.test_metrics for r in results]
        print(f"\n### {variant}: runs {[r.run_id for r in results]}")
        print(f"wall time per run {', '.join(f'{w / 60:.1f}' for w in walls[variant])} min")
        print(f"test, mean ± std over {len(rows)} seed(s):\n" + "\n".join(table(rows, "test")))
        if "test_selected/all/mrr" in rows[0]:
            print("\ntest of the validation-selected model, before the refit:\n"
                  + "\n".join(table(rows, "test_selected")))
        best = [selecting_score(r.stages) for r in results]
        print(f"best validation score per seed (selection metric): {', '.join(f'{b:.4f}' for b in best)}")
    if args.compare_pretraining:
        pre, alone = runs["pretrained"], runs["next-item only"]
        rows = [MetricRow("val", seeds, [selecting_score(r.stages) for r in alone],
                          [selecting_score(r.stages) for r in pre])]
        rows += [MetricRow(key, seeds, [r.test_metrics[key] for r in alone], [r.test_metrics[key] for r in pre])
                 for key in ("test/unseen/ndcg@10", "test/unseen/hr@10", "test/all/ndcg@10", "test/all/hr@10")]
        print(f"\n### pretrained minus next-item only, paired by seed {seeds} (sample std)")
        print(paired_table(rows, "next-item only", "pretrained"))


if __name__ == "__main__":
    reexec_with_fast_allocator()  # under jemalloc when installed, as the CLI runs (recbert.allocator)
    main()

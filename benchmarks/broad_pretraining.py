"""Pretraining on a broad log, fine-tuning on the target log (issue #9): does a pretraining
stage pay when it brings events the target training lacks?

The target (by default): MovieLens-100K's positive ratings (rating >= --min-rating) as
next-item data, leave-one-out, history excluded, full ranking over the target log's items in
every arm (``eval.candidates``: a model pretrained on the broad log knows more items, which
``--rank-among vocabulary`` ranks too, a harder task than the target-only arm's); ``--with
COLUMN=VALUE`` keeps only the items whose COLUMN in ``--items`` holds VALUE (``--genre Drama``
is ``--with genres=Drama``). ``--events`` / ``--items`` take another log, e.g. Beauty as
``recbert import s3rec`` writes it, with ``--with attributes=17`` (one category's items; a
log without a rating column keeps every event). The broad log: every event, cut before each
user's held-out target events (``recbert.data.holdout``: nothing the target
validates or tests on, nor anything after it, is in it). Per seed:

- target only: the recipe (``configs/sequential.toml``, no item features) on the target log;
- cloze on broad -> target: MLM pretraining on the broad log (the recipe's pretraining stage
  with ``objective = mlm``), then the recipe's next-item training on the target log from it
  (``init_from``);
- next-item on broad -> target: the recipe's next-item training on the broad log, then the
  same fine-tuning;
- next-item on broad, not fine-tuned: that broad model tested on the target split (how much
  the fine-tuning adds).

Prints each run, the test tables per arm, and each arm's paired difference from "target
only" (best validation and test, per seed, mean and sample std), with the wall time of
each arm (pretraining + fine-tuning).

    .venv/bin/python benchmarks/broad_pretraining.py [--seeds 0,1,2] [--min-rating 4] [--pretrain-epochs 40]
        [--with COLUMN=VALUE | --genre G] [--events E --items I] [--rank-among target|vocabulary] [--tag TAG]
        [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbert.config import DataConfig, RunConfig  # noqa: E402
from recbert.data.holdout import cut_before_holdout  # noqa: E402
from recbert.evaluation.comparison import MetricRow, paired_table, selecting_score  # noqa: E402
from recbert.jobs.evaluate import run_evaluation  # noqa: E402
from recbert.jobs.train import events_name, run_training  # noqa: E402
from recbert.allocator import reexec_with_fast_allocator  # noqa: E402

from quality import table  # noqa: E402  (benchmarks/quality.py: the same test tables)

EVENTS = ROOT / "data" / "ml-100k" / "events.parquet"
ITEMS = ROOT / "data" / "ml-100k" / "items.parquet"
RECIPE = ROOT / "configs" / "sequential.toml"
TEST_KEYS = ("test/unseen/ndcg@10", "test/unseen/hr@10", "test/all/ndcg@10", "test/all/hr@10")


def item_filter(spec: str) -> tuple[str, str]:
    """``COLUMN=VALUE`` as a pair."""
    column, sep, value = spec.partition("=")
    if not sep or not column or not value:
        raise argparse.ArgumentTypeError(f"takes COLUMN=VALUE (e.g. genres=Drama), got {spec!r}")
    return column, value


def items_with(items: Path, column: str, value: str) -> pl.Series:
    """The ids of the items whose ``column`` (a list column, or a scalar one) holds ``value``
    (read as the column's element type)."""
    frame = pl.read_parquet(items)
    if column not in frame.columns:
        raise SystemExit(f"{items} has no column {column!r}; found {frame.columns}")
    dtype = frame.schema[column]
    inner = dtype.inner if isinstance(dtype, pl.List) else dtype
    try:
        typed = pl.Series([value]).cast(inner, strict=True)[0]
    except pl.exceptions.InvalidOperationError:
        raise SystemExit(f"{items}: {column!r} holds {inner}, and {value!r} is not one") from None
    held = pl.col(column).list.contains(typed) if isinstance(dtype, pl.List) else pl.col(column) == typed
    ids = frame.filter(held)["item_id"]
    if ids.is_empty():
        raise SystemExit(f"no item in {items} has {value!r} in {column!r}")
    return ids


def write_logs(events: Path, min_rating: Optional[int], work: Path, data: DataConfig,
               where: Optional[tuple[str, str]] = None, items: Path = ITEMS) -> tuple[Path, Path, dict[str, int]]:
    """The target log (ratings >= ``min_rating`` when given; only the items of ``items`` whose
    column ``where[0]`` holds ``where[1]``, when given) and the broad log (every event, cut
    before the target's held-out events) as parquet files under ``work``."""
    ratings = pl.read_parquet(events)
    target = ratings
    if min_rating is not None:
        if "rating" not in ratings.columns:
            raise SystemExit(f"{events} has no rating column for --min-rating; found {ratings.columns}")
        target = target.filter(pl.col("rating") >= min_rating)
    if where is not None:
        target = target.filter(pl.col(data.item_col).is_in(items_with(items, *where).implode()))
    broad = cut_before_holdout(ratings, target, data)
    work.mkdir(parents=True, exist_ok=True)
    tag = "-".join([*([f"r{min_rating}"] if min_rating is not None else []), *([f"{where[0]}-{where[1]}"] if where else [])])
    paths = work / f"target-{tag or 'all'}.parquet", work / f"broad-{tag or 'all'}.parquet"
    for frame, path in zip((target, broad), paths):
        frame.write_parquet(path)
    return *paths, {"ratings": ratings.height, "target": target.height, "broad": broad.height}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per arm each")
    ap.add_argument("--events", type=Path, default=EVENTS, help="the log (default: MovieLens-100K's ratings)")
    ap.add_argument("--items", type=Path, default=ITEMS, help="its items file, for --with")
    ap.add_argument("--min-rating", type=int, help="the target log's ratings: at least this (default 4 when the "
                                                   "events have a rating column, else every event)")
    ap.add_argument("--with", dest="where", type=item_filter, metavar="COLUMN=VALUE",
                    help="the target log: only the items whose COLUMN (of --items) holds VALUE")
    ap.add_argument("--genre", help="the target log: only the movies of this genre (e.g. Drama): --with genres=G")
    ap.add_argument("--arms", default="mlm,next", help="the pretrained arms to run: mlm (cloze), next (next-item)")
    ap.add_argument("--pretrain-epochs", type=int, default=40, help="the cloze arm's pretraining epochs")
    ap.add_argument("--rank-among", choices=("target", "vocabulary"), default="target",
                    help="the items each target is ranked among, in every arm's validation and test: the target "
                         "log's (eval.candidates; a pretrained model's vocabulary also holds the broad log's) or "
                         "each model's whole vocabulary (the figures before 2026-12-05)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "broad")
    ap.add_argument("--tag", help="added to the MLflow experiments' names (broad[-LOG][-FILTER][-TAG]-ARM), so that a "
                                  "re-measurement does not mix with the runs before it")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[],
                    help="key=value for every run (e.g. threads=1)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    common = ["data.item_feature_columns=[]", "pretrain.objective=mlm", *args.overrides]
    recipe = RunConfig.load(RECIPE, common)
    data = recipe.data
    if args.genre and args.where:
        ap.error("--genre G is --with genres=G: give one of them")
    where = ("genres", args.genre) if args.genre else args.where
    min_rating = args.min_rating
    if min_rating is None and "rating" in pl.read_parquet_schema(args.events):
        min_rating = 4
    target, broad, sizes = write_logs(args.events, min_rating, args.work, data, where, args.items)
    kept = ", ".join([*([f"rating >= {min_rating}"] if min_rating is not None else []),
                      *([f"items with {where[1]} in {where[0]}"] if where else [])]) or "every event"
    print(f"events: {sizes['ratings']} in {args.events}; target log ({kept}) {sizes['target']}; "
          f"broad log (every event before each user's held-out target events) {sizes['broad']}", flush=True)
    pretrained = {"mlm": ("cloze on broad -> target", [f"pretrain.epochs={args.pretrain_epochs}", "train.epochs=0",
                                                       "refit=false"]),
                  "next": ("next-item on broad -> target", ["refit=false"])}
    chosen = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not chosen or any(a not in pretrained for a in chosen):
        ap.error(f"--arms takes a comma-separated choice of {list(pretrained)}, got {args.arms!r}")
    named = ([where[1].lower()] if args.genre else [f"{where[0]}-{where[1]}".lower()]) if where else []
    prefix = "-".join(["broad", *([] if args.events == EVENTS else [events_name(args.events).lower()]), *named,
                       *([args.tag] if args.tag else [])])

    ranked = dataclasses.replace(recipe.eval, candidates=str(target) if args.rank_among == "target" else None)
    candidates = [f"eval.candidates={target}"] if ranked.candidates else []

    def train(events: Path, name: str, seed: int, *extra: str):
        cfg = RunConfig.load(RECIPE, [*common, f"data.events={events}", f"seed={seed}",
                                      f"tracking.experiment={prefix}-{name}", *extra])
        started = time.perf_counter()
        result = run_training(cfg)
        wall = time.perf_counter() - started
        stages = "; ".join(f"{s.name} {s.epochs_run} ep (best {s.best_epoch}, {s.stopped})" for s in result.stages)
        print(f"{name}, seed {seed}: MLflow run {result.run_id}, {wall / 60:.1f} min; {stages}; test NDCG@10 "
              f"unseen {result.test_metrics['test/unseen/ndcg@10']:.4f}", flush=True)
        return result, wall

    arms = ("target only", *(pretrained[a][0] for a in chosen))
    runs: dict[str, list] = {a: [] for a in arms}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    unfinetuned: list[dict[str, float]] = []
    for seed in seeds:
        result, wall = train(target, "target", seed, *candidates)
        runs["target only"].append(result)
        walls["target only"].append(wall)
        for name in chosen:
            arm, stage = pretrained[name]
            pre, pre_wall = train(broad, f"{name}-broad", seed, *stage)
            if name == "next":
                unfinetuned.append({f"test/{k}": v for k, v in
                                    run_evaluation(pre.model_dir, str(target), eval_config=ranked).items()})
            tuned, tune_wall = train(target, f"{name}-target", seed, f"init_from={pre.model_dir}", *candidates)
            runs[arm].append(tuned)
            walls[arm].append(pre_wall + tune_wall)

    print(f"\n## broad pretraining, {args.events}: {datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"command: .venv/bin/python benchmarks/broad_pretraining.py --seeds {args.seeds}"
          f"{f' --min-rating {args.min_rating}' if args.min_rating is not None else ''}"
          f"{f' --genre {args.genre}' if args.genre else ''}"
          f"{f' --with {where[0]}={where[1]}' if where and not args.genre else ''}"
          f"{f' --events {args.events} --items {args.items}' if args.events != EVENTS else ''}"
          f"{f' --tag {args.tag}' if args.tag else ''} --arms {args.arms} --rank-among {args.rank_among} "
          f"--pretrain-epochs {args.pretrain_epochs}"
          + "".join(f" --set {o}" for o in args.overrides))
    for arm in arms:
        rows = [r.test_metrics for r in runs[arm]]
        print(f"\n### {arm}: runs {[r.run_id for r in runs[arm]]}")
        print(f"wall time per seed (pretraining + fine-tuning) {', '.join(f'{w / 60:.1f}' for w in walls[arm])} min")
        print(f"test, mean ± std over {len(rows)} seed(s):\n" + "\n".join(table(rows, "test")))
        print(f"best validation per seed: {', '.join(f'{selecting_score(r.stages):.4f}' for r in runs[arm])}")
    if unfinetuned:
        print("\n### next-item on broad, not fine-tuned, tested on the target split:\n"
              + "\n".join(table(unfinetuned, "test")))
    alone = runs["target only"]
    for arm in arms[1:]:
        rows = [MetricRow("val", seeds, [selecting_score(r.stages) for r in alone],
                          [selecting_score(r.stages) for r in runs[arm]])]
        rows += [MetricRow(key, seeds, [r.test_metrics[key] for r in alone], [r.test_metrics[key] for r in runs[arm]])
                 for key in TEST_KEYS]
        print(f"\n### {arm} minus target only, paired by seed {seeds} (sample std)")
        print(paired_table(rows, "target only", arm))


if __name__ == "__main__":
    reexec_with_fast_allocator()  # under jemalloc when installed, as the CLI runs
    main()

"""The ``recbert`` command line. User errors print one line and exit with status 2."""

from __future__ import annotations

import json
import logging
import os
import sys
import typing
from pathlib import Path

import click

from recbert.config import DataConfig
from recbert.data.tasks import TASKS
from recbert.errors import RecbertError
from recbert.exports.embeddings import USER_POOLINGS
from recbert.index.auto import AUTO, AutoSettings
from recbert.index.spec import DEVICES, KINDS, METRICS

# Every list of choices below comes from the registry that the library validates against.
SPLITS = typing.get_args(typing.get_type_hints(DataConfig)["split"])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(quiet: bool) -> None:
    """recbert: user-behaviour ID sequences as sentences.

    Typical flow: `recbert import ...` -> `recbert train` -> `recbert evaluate` / `recbert recommend`.
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if quiet:  # MLflow's artifact download bar too (unless the variable is set explicitly)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# -- import ------------------------------------------------------------------------------
@cli.group("import")
def import_group() -> None:
    """Convert a public dataset format to canonical events parquet."""


@import_group.command("movielens")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def import_movielens(src: Path, out: Path) -> None:
    """MovieLens-100K folder SRC (u.data, u.item, u.user) -> folder OUT."""
    from recbert.data.importers import import_movielens_100k

    counts = import_movielens_100k(src, out)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@import_group.command("s3rec")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--attributes", type=click.Path(path_type=Path), help="*_item2attributes.json beside SRC.")
def import_s3rec(src: Path, out: Path, attributes: Path | None) -> None:
    """S3-Rec text file SRC (user item item ...) -> folder OUT."""
    from recbert.data.importers import import_s3rec as run

    counts = run(src, out, attributes)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# -- synthetic data -----------------------------------------------------------------------------
@cli.command("generate")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--events", "n_events", type=int, help="About this many events (default 100000).")
@click.option("--users", "n_users", type=int, help="This many users, instead of --events.")
@click.option("--items", "n_items", type=int, help="Catalogue size (default 10000).")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A GeneratorConfig field, e.g. --set zipf_exponent=1.1 --set pattern_prob=0.7 (repeatable).")
def generate(out: Path, n_events: int | None, n_users: int | None, n_items: int | None, seed: int | None,
             overrides: tuple[str, ...]) -> None:
    """Seeded synthetic log -> folder OUT: events/ (hive-partitioned by user bucket),
    items.parquet (item_id, category), successors.parquet (the learnable pattern), generator.json."""
    from recbert.config import build_section, parse_overrides
    from recbert.data.generate import GeneratorConfig, generate_events

    options = (("n_events", n_events), ("n_users", n_users), ("n_items", n_items), ("seed", seed))
    raw = parse_overrides(list(overrides), {k: v for k, v in options if v is not None})
    if raw.get("n_users") is not None:
        raw.setdefault("n_events", None)  # a number of users replaces the default number of events
    meta = generate_events(out, build_section(GeneratorConfig, raw, "", GeneratorConfig()))
    click.echo(f"wrote {out}: users {meta['n_users']}, events {meta['n_events']}, items {meta['n_items']}, "
               f"files {meta['n_files']}, pattern share {meta['pattern']['share_of_pairs']:.3f}")


# -- config ------------------------------------------------------------------------------------
def _load_config(config: Path | None, overrides: tuple[str, ...], events: str | None, no_mlflow: bool):
    from recbert.config import RunConfig

    sets = list(overrides)
    if events:
        sets.append(f"data.events={events}")
    if no_mlflow:
        sets.append("tracking.enabled=false")
    return RunConfig.load(config, sets)


config_option = click.option("-c", "--config", type=click.Path(path_type=Path), help="TOML or JSON run config.")
set_option = click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set train.epochs=5 (repeatable).")


@cli.command("config")
@config_option
@set_option
def show_config(config: Path | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved run config as JSON (defaults when no file is given)."""
    click.echo(json.dumps(_load_config(config, overrides, None, False).to_dict(), indent=2))


# -- train / evaluate -------------------------------------------------------------------------
@cli.command("train")
@config_option
@set_option
@click.option("--events", help="Events parquet (overrides data.events).")
@click.option("--no-mlflow", is_flag=True, help="Do not track the run in MLflow.")
@click.option("--resume", "resume_from", metavar="RUN",
              help="Continue a killed run from its newest checkpoint: its MLflow run id (or name without MLflow), "
                   "its checkpoint folder or a checkpoint file. The run's own config is used; -c/--set, if given, "
                   "must resolve to the same.")
@click.option("--register", "register_as", metavar="NAME",
              help="Register the trained model in the MLflow model registry under NAME (tracking.register_as).")
def train(config: Path | None, overrides: tuple[str, ...], events: str | None, no_mlflow: bool,
          resume_from: str | None, register_as: str | None) -> None:
    """Train (MLM pretraining and/or next-item training) and evaluate on the test split.
    Checkpoints are written under {out_dir}/checkpoints/{run}/ (checkpoint.* keys)."""
    from recbert.jobs.train import format_metrics, run_training

    point = None
    if register_as:
        overrides = overrides + (f"tracking.register_as={register_as}",)
    if resume_from is None:
        cfg = _load_config(config, overrides, events, no_mlflow)
    else:
        from recbert.jobs.resume import find_resume_point

        given = _load_config(config, overrides, events, no_mlflow) if config or overrides or events or no_mlflow \
            else None
        point = find_resume_point(resume_from, given.out_dir if given is not None else "runs")
        cfg = given if given is not None else point.config
    result = run_training(cfg, resume=point)  # under torchrun: on every rank, and rank 0 reports
    if not result.is_main:
        return
    test = {k.removeprefix("test/"): v for k, v in result.test_metrics.items() if k.startswith("test/")}
    click.echo(format_metrics(test, cfg))
    click.echo(f"model: {result.model_dir}")
    click.echo(f"mlflow run id: {result.run_id}" if result.run_id else "mlflow: off")
    click.echo(f"wall time: {result.seconds:.1f}s")


@cli.command("shard")
@config_option
@set_option
@click.option("--events", help="Events parquet file or folder (overrides data.events).")
@click.option("--out", help="Shard folder (overrides data.shards).")
def shard(config: Path | None, overrides: tuple[str, ...], events: str | None, out: str | None) -> None:
    """Write the events as per-user sequence shards for streamed training (data.shards),
    with memory bounded by data.shard_events; reused by `recbert train` with the same settings
    (with init_from set: encoded with that saved model's vocabulary)."""
    from recbert.data.shards import ensure_shards
    from recbert.errors import ConfigError
    from recbert.model.warm_start import saved_vocab

    cfg = _load_config(config, overrides + ((f"data.shards={out}",) if out else ()), events, True)
    if cfg.data.shards is None:
        raise ConfigError("recbert shard: name the shard folder with --out or data.shards")
    shards = ensure_shards(cfg.data.events, cfg.data, saved_vocab(cfg.init_from) if cfg.init_from else None)
    click.echo(f"{shards.directory}: {len(shards.files)} shard(s), {shards.n_users} users, {shards.n_events} events, "
               f"{shards.vocab().n_items} items, {shards.n_eval_users} evaluated users")


@cli.command("cut-broad")
@config_option
@set_option
@click.option("--broad", required=True, help="The broad log to pretrain on (parquet file or folder).")
@click.option("--target", required=True, help="The target log the fine-tuning run trains and is evaluated on.")
@click.option("--out", required=True, help="The cut broad log (parquet file; replaced whole).")
def cut_broad(config: Path | None, overrides: tuple[str, ...], broad: str, target: str, out: str) -> None:
    """Write the broad log without anything the target run holds out, or anything after it, per
    user (leave-one-out: from each user's validation event on; time split: from the validation
    cut on), to pretrain on before fine-tuning on the target with init_from. The split and the
    column names are the config's [data] section: give the target run's config."""
    from recbert.data.holdout import write_cut_before_holdout

    cfg = _load_config(config, overrides, None, True)
    kept, total = write_cut_before_holdout(broad, target, out, cfg.data)
    click.echo(f"{out}: kept {kept} of {total} broad events (split: {cfg.data.split})")


def _model_dir(model_dir: Path | None, run_id: str | None) -> Path:
    from recbert.model.checkpoint import resolve_model_dir

    return resolve_model_dir(model_dir, run_id)


def _unknown_note(n: int, hash_buckets: int) -> str:
    where = "their hash buckets" if hash_buckets else "[UNK]"
    return f"note: {n} unknown item id(s) scored as {where}"


model_options = [
    click.option("--run-id", help="MLflow run id whose logged model to use."),
    click.option("--model-dir", type=click.Path(path_type=Path), help="A saved model directory."),
]


def with_model(f):
    for opt in reversed(model_options):
        f = opt(f)
    return f


@cli.command("evaluate")
@with_model
@click.option("--events", help="Events parquet to evaluate on (default: the training events).")
@click.option("--split", type=click.Choice(SPLITS), help="Override the split.")
@set_option
def evaluate(run_id: str | None, model_dir: Path | None, events: str | None, split: str | None,
             overrides: tuple[str, ...]) -> None:
    """Full-ranking test metrics of a trained model (all / unseen / sampled protocols).
    --set takes eval.* keys, laid over the model's own eval settings (e.g. --set
    eval.candidates=items.parquet ranks among those items only; eval.candidates=null ranks
    every item again for a model trained with candidates)."""
    from recbert.config import RunConfig, parse_overrides
    from recbert.errors import ConfigError
    from recbert.jobs.evaluate import run_evaluation
    from recbert.jobs.train import format_metrics
    from recbert.model.checkpoint import load_run_config

    others = [o for o in overrides if not o.strip().startswith("eval.")]
    if others:
        raise ConfigError(f"recbert evaluate --set takes eval.* keys only, got {others}; "
                          "--events and --split choose the data")
    path = _model_dir(model_dir, run_id)
    run_cfg = load_run_config(path) or RunConfig()
    if overrides:
        run_cfg = RunConfig.from_dict(parse_overrides(list(overrides), run_cfg.to_dict()))
    metrics = run_evaluation(path, events, split, run_cfg.eval)
    click.echo(format_metrics(metrics, run_cfg))


@cli.command("recommend")
@with_model
@click.option("--items", required=True, help="Comma-separated ORIGINAL item ids, oldest first.")
@click.option("-k", "--top-k", default=10, show_default=True)
@click.option("--keep-seen", is_flag=True, help="Allow items already in the history.")
def recommend(run_id: str | None, model_dir: Path | None, items: str, top_k: int, keep_seen: bool) -> None:
    """Score an ad-hoc history (a new user's sequence) and print the top-k items."""
    from recbert.model.recommender import SequenceRecommender

    history = [s.strip() for s in items.split(",") if s.strip()]
    if not history:
        raise RecbertError(f"--items {items!r} holds no item ids: give comma-separated original ids, oldest first")
    model = SequenceRecommender.from_pretrained(_model_dir(model_dir, run_id))
    if not model.vocab.is_string:
        bad = [s for s in history if not s.lstrip("-").isdigit()]
        if bad:
            raise RecbertError(f"item ids {bad[:5]} are not integers, but this model's item ids are")
        history = [int(s) for s in history]
    unknown = int((~model.vocab.is_item(model.vocab.encode(history))).sum()) if history else 0
    if unknown:
        click.echo(_unknown_note(unknown, model.vocab.hash_buckets), err=True)
    ids, scores = model.recommend([history], k=top_k, exclude_seen=not keep_seen)
    for rank, (i, s) in enumerate(zip(ids[0], scores[0]), 1):
        click.echo(f"{rank}\t{i}\t{s:.4f}")


# -- export / index / batch recommendations ---------------------------------------------------
no_mlflow_option = click.option("--no-mlflow", is_flag=True, help="Do not track this job in MLflow.")


def _retrieval_tracking(no_mlflow: bool):
    """Retrieval jobs are MLflow runs in the 'recbert-retrieval' experiment (unless --no-mlflow)."""
    from recbert.config import TrackingConfig
    from recbert.jobs.retrieval import RETRIEVAL_EXPERIMENT

    return TrackingConfig(enabled=not no_mlflow, experiment=RETRIEVAL_EXPERIMENT)


@cli.command("export")
@with_model
@click.option("--what", type=click.Choice(["users", "items"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Parquet file to write.")
@click.option("--events", help="Events whose users to export (default: the training events).")
@click.option("--normalize", is_flag=True, help="L2-normalise (cosine retrieval; drops the bias column).")
@click.option("--no-bias", is_flag=True, help="Leave out the item-bias coordinate.")
@click.option("--batch-size", default=4096, show_default=True)
@click.option("--pooling", type=click.Choice(USER_POOLINGS),
              help="Users: pool the encoder's output over the history instead of the scorer's user vector "
                   "(features for other models; no bias column).")
@no_mlflow_option
def export(run_id, model_dir, what, out, events, normalize, no_bias, batch_size, pooling, no_mlflow) -> None:
    """Export user or item embeddings (original ids) to parquet."""
    from recbert.jobs.retrieval import run_export

    n = run_export(_model_dir(model_dir, run_id), what, out, events, normalize, not no_bias, run_id, batch_size,
                   pooling, tracking=_retrieval_tracking(no_mlflow))
    click.echo(f"wrote {n} {what} to {out}")


@cli.group("index")
def index_group() -> None:
    """Faiss index over exported embeddings."""


@index_group.command("build")
@click.option("--embeddings", type=click.Path(path_type=Path), required=True, help="Exported items parquet.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Index directory to write.")
@click.option("--kind", type=click.Choice((*KINDS, AUTO)), default="flat", show_default=True,
              help=f"'{AUTO}': build candidates, measure recall against exact search on held-out queries "
                   "and keep the fastest that reaches --target-recall.")
@click.option("--metric", type=click.Choice(METRICS), default="ip", show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--target-recall", type=float, default=AutoSettings.target_recall, show_default=True,
              help="--kind auto: recall@k the index must reach.")
@click.option("--queries", "queries", type=click.Path(path_type=Path),
              help="--kind auto: exported USERS parquet whose vectors are the measured queries "
                   "(default: held-out rows of --embeddings).")
@click.option("--auto-k", type=int, default=AutoSettings.k, show_default=True, help="--kind auto: the k of recall@k.")
@click.option("--auto-sample", type=int, default=AutoSettings.sample, show_default=True,
              help="--kind auto: build the candidates on at most this many vectors.")
@click.option("--auto-queries", type=int, default=AutoSettings.queries, show_default=True,
              help="--kind auto: held-out queries measured.")
@click.option("--overwrite", is_flag=True)
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Index parameter, e.g. --set nlist=1024 --set nprobe=16 --set ef_search=128.")
@no_mlflow_option
def index_build(embeddings, out, kind, metric, device, target_recall, queries, auto_k, auto_sample, auto_queries,
                overwrite, overrides, no_mlflow) -> None:
    """Build and save an index (exact inner product by default)."""
    from recbert.config import build_section, parse_overrides
    from recbert.index import IndexConfig
    from recbert.jobs.retrieval import run_index_build

    auto = None
    if kind == AUTO:
        auto = AutoSettings(target_recall=target_recall, k=auto_k, sample=auto_sample, queries=auto_queries)
    elif queries is not None:
        raise click.UsageError("--queries applies to --kind auto only")
    base = IndexConfig(kind="flat" if auto else kind, metric=metric, device=device)
    config = build_section(IndexConfig, parse_overrides(list(overrides)), "", base)
    index = run_index_build(embeddings, out, config, overwrite, tracking=_retrieval_tracking(no_mlflow),
                            auto=auto, queries=queries, progress=None if auto is None else click.echo)
    click.echo(f"wrote {out}: {index!r}")
    if index.measured is not None:
        m = index.measured
        click.echo(f"measured: recall@{m['k']} {m['recall']:.4f} at {m['qps']:,.0f} QPS, "
                   f"{m['speedup']:.1f}x exact search ({m['exact_qps']:,.0f} QPS) on {m['queries']:,} "
                   f"{m['queries_from']}" + (" - the machine was BUSY" if m["load"]["busy"] else ""))


@cli.command("recommend-batch")
@with_model
@click.option("--index", "index_dir", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Parquet: user_id, rank, item_id, score.")
@click.option("--users", type=click.Path(path_type=Path), help="Parquet with a user_id column (default: all users).")
@click.option("--events", help="Events giving the users' histories (default: the training events).")
@click.option("-k", "--top-k", default=10, show_default=True)
@click.option("--keep-seen", is_flag=True, help="Allow items already in a user's history.")
@click.option("--recall-sample", default=1000, show_default=True,
              help="Approximate index: measure recall@k against exact search on this many sampled users (0 = skip).")
@no_mlflow_option
def recommend_batch(run_id, model_dir, index_dir, out, users, events, top_k, keep_seen, recall_sample,
                    no_mlflow) -> None:
    """Top-k recommendations for many users through a Faiss index."""
    from recbert.jobs.retrieval import run_batch_recommend

    res = run_batch_recommend(_model_dir(model_dir, run_id), index_dir, out, top_k, users, events, not keep_seen,
                              recall_sample=recall_sample, run_id=run_id, tracking=_retrieval_tracking(no_mlflow))
    click.echo(f"wrote top-{top_k} for {res.users} users to {out}")
    if res.recall_at_k is not None:
        click.echo(f"recall@{top_k} vs exact search: {res.recall_at_k:.4f} ({res.recall_users} sampled users)")


@index_group.command("query")
@with_model
@click.option("--index", "index_dir", type=click.Path(path_type=Path), required=True)
@click.option("--user", "user_id", help="A user id: its history comes from --events (default: the training events).")
@click.option("--items", help="Or a session: comma-separated ORIGINAL item ids, oldest first.")
@click.option("--events", help="Events giving the user's history (default: the training events).")
@click.option("-k", "--top-k", default=10, show_default=True)
@click.option("--keep-seen", is_flag=True, help="Allow items already in the history.")
def index_query(run_id, model_dir, index_dir, user_id, items, events, top_k, keep_seen) -> None:
    """Top-k items for one user id or an ad-hoc item list, through the index."""
    from recbert.jobs.retrieval import run_index_query

    session = [s.strip() for s in items.split(",") if s.strip()] if items is not None else None
    if session is not None and not session:
        raise RecbertError(f"--items {items!r} holds no item ids: give comma-separated original ids, oldest first")
    ids, scores, info = run_index_query(_model_dir(model_dir, run_id), index_dir, top_k, user_id, session, events,
                                        not keep_seen)
    if info.get("unknown_items"):
        click.echo(_unknown_note(info["unknown_items"], info["hash_buckets"]), err=True)
    for rank, (i, s) in enumerate(zip(ids, scores), 1):
        click.echo(f"{rank}\t{i}\t{s:.4f}")


# -- experiments: fine-tuning and ablations -----------------------------------------------------
@cli.command("finetune")
@click.option("--task", type=click.Choice(TASKS), required=True,
              help="label: your own users table (experiment.users) and its column experiment.label_column.")
@with_model
@click.option("--scratch", is_flag=True, help="Fine-tune a freshly initialised encoder (same ModelConfig) "
              "instead of the pretrained one.")
@click.option("--compare", is_flag=True, help="Run both the pretrained and the scratch variant.")
@click.option("--folds", type=int, help="StratifiedKFold splits for classification tasks (experiment.folds).")
@click.option("--epochs", type=int, help="Fine-tuning epochs (experiment.epochs).")
@config_option
@set_option
@click.option("--no-mlflow", is_flag=True, help="Do not track the runs in MLflow.")
@click.option("--save-model", type=click.Path(path_type=Path),
              help="Also save a fine-tuned head (first variant) to this directory, for `recbert predict`: "
                   "classification: refit on all users; ctr: the first seed's model.")
def finetune_cmd(task, run_id, model_dir, scratch, compare, folds, epochs, config, overrides, no_mlflow,
                 save_model) -> None:
    """Fine-tune a head on a user-classification task (MovieLens gender / age / occupation,
    or `label`: any categorical column of your users table) or on MovieLens CTR, and
    compare it with a scikit-learn baseline. Keys: experiment.*, model.* (scratch without a
    model), head.*, ctr.*, finetune.*, tracking.*."""
    from recbert.jobs.finetune import FinetuneRunConfig, metric_names, run_task

    sets = list(overrides)
    if folds is not None:
        sets.append(f"experiment.folds={folds}")
    if epochs is not None:
        sets.append(f"experiment.epochs={epochs}")
    if no_mlflow:
        sets.append("tracking.enabled=false")
    cfg = FinetuneRunConfig.load(config, sets)
    if scratch and compare:
        raise RecbertError("give at most one of --scratch and --compare")
    path = None
    if model_dir is not None or run_id is not None:
        path = _model_dir(model_dir, run_id)
    elif not scratch:
        raise RecbertError("give a pretrained model (--model-dir or --run-id), or --scratch")
    variants = ("pretrained", "scratch") if compare else ("scratch",) if scratch else ("pretrained",)
    result = run_task(path, task, cfg, variants, save_dir=save_model)
    click.echo(result.info.get("table") or result.table(metric_names(task)))
    if save_model is not None:
        click.echo(f"head model: {save_model}")
    click.echo(f"mlflow run id: {result.run_id}" if result.run_id else "mlflow: off")
    click.echo(f"wall time: {result.seconds:.1f}s")


@cli.command("predict")
@click.option("--model", "head_dir", type=click.Path(path_type=Path), required=True,
              help="A fine-tuned head directory (recbert finetune --save-model, or save_pretrained).")
@click.option("--events", required=True, help="Events parquet with the users' histories "
              "(user_id, item_id, timestamp).")
@click.option("--users", type=click.Path(path_type=Path), help="Classifier: parquet with a user_id column "
              "(default: every user of --events).")
@click.option("--pairs", type=click.Path(path_type=Path), help="CTR model: parquet of (user_id, item_id) candidates.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output parquet.")
@click.option("--batch-size", type=int, default=1024, show_default=True)
def predict_cmd(head_dir, events, users, pairs, out, batch_size) -> None:
    """Score users with a fine-tuned head: class predictions per user (classifier) or click
    probabilities per (user, item) pair (CTR)."""
    from recbert.jobs.predict import run_predict

    n = run_predict(head_dir, events, out, users=users, pairs=pairs, batch_size=batch_size)
    click.echo(f"wrote {n} rows to {out}")


@cli.command("ablate")
@config_option
@set_option
@click.option("--no-mlflow", is_flag=True, help="Do not track the runs in MLflow.")
def ablate_cmd(config, overrides, no_mlflow) -> None:
    """Ablation grid (grid.* switches x grid.seeds) on a user-classification task; prints a
    markdown table of mean ± std per metric and logs it to the MLflow parent run."""
    from recbert.jobs.ablate import AblationConfig, run_ablation

    sets = list(overrides) + (["tracking.enabled=false"] if no_mlflow else [])
    result = run_ablation(AblationConfig.load(config, sets))
    click.echo(result.table)
    click.echo(f"mlflow run id: {result.run_id}" if result.run_id else "mlflow: off")


# -- runs in the MLflow store ---------------------------------------------------------------
@cli.group("runs")
def runs_group() -> None:
    """The runs of the MLflow store ($MLFLOW_TRACKING_URI, else mlruns/): list, show, compare, export, doctor."""


@runs_group.command("list")
@click.option("-e", "--experiment", help="Only this experiment (default: all).")
@click.option("-n", "--limit", default=20, show_default=True, help="The newest this many runs.")
@click.option("--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED"], case_sensitive=False))
def runs_list(experiment, limit, status) -> None:
    """Recent top-level runs with their headline test and validation metrics."""
    from recbert.runs import format_runs, list_runs

    click.echo(format_runs(list_runs(experiment=experiment, limit=limit, status=status)))


@runs_group.command("show")
@click.argument("run_id")
def runs_show(run_id) -> None:
    """One run: status, error, tags, final metrics, params."""
    from recbert.runs import show_run

    click.echo(show_run(run_id))


@runs_group.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@click.option("-m", "--metric", "metrics", multiple=True,
              help="A metric to compare (repeatable; 'val' = the selecting stage's best validation). "
                   "Default: val, test and test_selected NDCG@10 / HR@10 (unseen), test/all NDCG@10, "
                   "time/total_seconds.")
def runs_compare(baseline, candidate, metrics) -> None:
    """Two experiments' finished train runs paired by seed: per metric each arm's mean ± std,
    the paired difference's mean ± std, per seed, and mean/std. Either side may be an arm
    file (*.json) written by `recbert runs export`."""
    from recbert.evaluation.comparison import DEFAULT_METRICS, compare_experiments

    click.echo(compare_experiments(baseline, candidate, metrics or DEFAULT_METRICS).format())


@runs_group.command("export")
@click.argument("experiment")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The arm file to write (*.json), e.g. benchmarks/results/EXPERIMENT.json.")
@click.option("-m", "--metric", "metrics", multiple=True,
              help="A metric to keep (repeatable; default: those `runs compare` reads).")
@click.option("--note", default="", help="What the arm is (config, command, commit), kept in the file.")
def runs_export(experiment, output, metrics, note) -> None:
    """An experiment's newest finished train run per seed, with its metrics, as an arm file
    that `recbert runs compare` reads in place of the experiment (after its store is gone)."""
    from recbert.evaluation.comparison import DEFAULT_METRICS, export_arm, is_arm_file

    if not is_arm_file(output):
        raise RecbertError(f"--output must end in .json (how `runs compare` tells an arm file), got {output!r}")
    arm = export_arm(experiment, output, metrics or DEFAULT_METRICS, note=note)
    click.echo(f"wrote {output}: experiment {experiment!r}, seeds {sorted(arm.runs)}")


@runs_group.command("doctor")
@click.option("-e", "--experiment", help="Only this experiment (default: all).")
@click.option("--fix", is_flag=True, help="Mark the runs whose process is gone as KILLED.")
def runs_doctor(experiment, fix) -> None:
    """Find RUNNING runs whose process has died (SIGKILL, out of memory): exit status 1
    when there are some and --fix is not given."""
    from recbert.runs import find_stale_runs, mark_killed

    stale, elsewhere = find_stale_runs(experiment=experiment)
    for s in stale:
        click.echo(f"{s.row.run_id}  {s.row.name}: RUNNING, but {s.reason}" + ("; marked KILLED" if fix else ""))
    for r in elsewhere:
        click.echo(f"{r.run_id}  {r.name}: RUNNING on {r.tags.get('recbert.host', 'an unknown host')}: "
                   "cannot be checked from here")
    if fix:
        mark_killed(stale)
    if not stale and not elsewhere:
        click.echo("no runs left RUNNING")
    elif stale and not fix:
        click.echo(f"{len(stale)} run(s) left RUNNING by a dead process: `recbert runs doctor --fix` marks them KILLED")
        click.get_current_context().exit(1)


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="recbert", standalone_mode=False)
        if isinstance(code, int):  # a command's ctx.exit(code)
            return code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except RecbertError as exc:
        click.echo(f"error: {exc}", err=True)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # outside the atomic writers: a file that cannot be read or written
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        return 1
    return 0


def run() -> None:
    """The console script: under jemalloc when it is installed (recbert.allocator), then
    :func:`main`. Tests and Python callers use :func:`main`, which never re-executes."""
    run_job(None)


def run_job(command: str | None) -> None:
    """A front door (the console script, or a pipelines/ script for ``command``): the
    process re-runs itself under jemalloc when it can, then runs the command."""
    from recbert.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator()
    sys.exit(main(sys.argv[1:] if command is None else [command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

"""Ablation runner: a grid of model / fine-tuning switches x seeds on one user-classification
task of MovieLens-100K, one MLflow parent run with a child run per variant (whose own children
are the folds), and a markdown table of mean ± std per metric (over seeds x folds).

Switches (the first value of each list is the base setting):

* ``fusion``: ``model.fusion`` ('last', 'learned', 'mean', 'max', 'sum');
* ``reuse_block``: ``model.reuse_block`` ('none', 'lstm', 'gru', 'cnn', 'transformer');
* ``residual_attention``: ``model.residual_attention``;
* ``pretrained``: MLM-pretrain the encoder for ``grid.pretrain_epochs`` on the events before
  fine-tuning (True) or fine-tune a freshly initialised one (False);
* ``aux``: the auxiliary encoder loss during fine-tuning: 'none', 'mlm' (continued cloze
  loss, ``grid.aux_lambda_mlm``) or 'head' (a classifier on the plain last-layer pooled
  vector, ``grid.aux_lambda_head``; the seed used 0.8);
* ``tower``: the head's MLP tower: the dimension-free residual blocks f(x) + Wx ('add'), their
  concatenation variant [f(x); x] ('concat') or a plain MLP without skip paths ('plain' = off).

``grid.mode='one_at_a_time'`` runs the base variant plus every other value of each switch with
the rest at base (1 + sum(len - 1) variants); ``'full'`` runs the Cartesian product.
Pretrained encoders are cached per (architecture, seed) within one call.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence


from recbert.config import DataConfig, ModelConfig, RunConfig, StageConfig, TrackingConfig, load_config
from recbert.errors import ConfigError
from recbert.heads.classification import HeadConfig
from recbert.heads.ctr import CTRConfig
from recbert.heads.finetune import AUX_LOSSES, FinetuneConfig
from recbert.evaluation.classification import CLASSIFICATION_METRICS
from recbert.evaluation.report import mean_std, results_table
from recbert.jobs.finetune import ExperimentConfig, FinetuneRunConfig, run_classification
from recbert.jobs.train import run_training
from recbert.model.blocks import REUSE_BLOCKS
from recbert.model.fusion import FUSIONS
from recbert.model.mlp import VARIANTS as TOWER_VARIANTS
from recbert.tracking import Tracker

log = logging.getLogger("recbert.ablate")

SWITCHES = ("fusion", "reuse_block", "residual_attention", "pretrained", "aux", "tower")


@dataclass(frozen=True)
class AblationGrid:
    task: Literal["gender", "age", "occupation"] = "gender"
    mode: Literal["one_at_a_time", "full"] = "one_at_a_time"
    seeds: list[int] = field(default_factory=lambda: [0])
    fusion: list[str] = field(default_factory=lambda: ["last", "learned", "mean"])
    reuse_block: list[str] = field(default_factory=lambda: ["none", "gru"])
    residual_attention: list[bool] = field(default_factory=lambda: [False, True])
    pretrained: list[bool] = field(default_factory=lambda: [True, False])
    aux: list[str] = field(default_factory=lambda: ["none", "mlm", "head"])
    tower: list[str] = field(default_factory=lambda: ["add", "plain", "concat"])
    pretrain_epochs: int = 5
    aux_lambda_mlm: float = 0.2
    aux_lambda_head: float = 0.8
    max_variants: Optional[int] = None  # keep only the first N variants (quick checks)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("grid.seeds must name at least one seed")
        for name in SWITCHES:
            if not getattr(self, name):
                raise ConfigError(f"grid.{name} must list at least one value")
        if self.pretrain_epochs < 1 and True in self.pretrained:
            raise ConfigError("grid.pretrain_epochs must be >= 1 when grid.pretrained holds true")
        for name in ("aux_lambda_mlm", "aux_lambda_head"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"grid.{name} must be in (0, 1), got {getattr(self, name)}")
        _check_values("aux", self.aux, AUX_LOSSES)
        if self.max_variants is not None and self.max_variants < 1:
            raise ConfigError(f"grid.max_variants must be >= 1, got {self.max_variants}")
        # the values come from the registries of the switches they set
        _check_values("reuse_block", self.reuse_block, REUSE_BLOCKS)
        _check_values("fusion", self.fusion, FUSIONS)
        _check_values("tower", self.tower, TOWER_VARIANTS)

    def variants(self) -> list[dict[str, Any]]:
        base = {s: getattr(self, s)[0] for s in SWITCHES}
        if self.mode == "full":
            out = [dict(zip(SWITCHES, combo)) for combo in itertools.product(*(getattr(self, s) for s in SWITCHES))]
        else:
            out = [dict(base)]
            for s in SWITCHES:
                for value in getattr(self, s)[1:]:
                    out.append({**base, s: value})
        unique = list({variant_name(v, base): v for v in out}.values())
        return unique[: self.max_variants] if self.max_variants else unique


def _check_values(switch: str, values: list, allowed) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"grid.{switch} values must be among {list(allowed)}, got {bad}")


def variant_name(variant: dict[str, Any], base: dict[str, Any]) -> str:
    diff = [f"{k}={v}" for k, v in variant.items() if v != base[k]]
    return "base" if not diff else ", ".join(diff)


@dataclass(frozen=True)
class AblationConfig:
    """`recbert ablate` config: the grid, the shared model / pretraining / fine-tuning settings."""

    grid: AblationGrid = field(default_factory=AblationGrid)
    experiment: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(folds=3, epochs=5,
                                                                                   baselines=False))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=64, layers=2, heads=2, intermediate=256,
                                                                   max_len=50))
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(objective="mlm", lr=0.002, eval_every=5))
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(encoder_lr=1e-3, patience=100))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="recbert-ablate"))
    threads: Optional[int] = None
    device: str = "auto"  # pretraining and fine-tuning, as in `recbert train`

    def flat(self) -> dict[str, Any]:
        return RunConfig.flat(self)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "AblationConfig":
        return load_config(cls, path, overrides)


@dataclass
class AblationResult:
    run_id: Optional[str]
    task: str
    names: list[str]
    variants: list[dict[str, Any]]
    runs: dict[str, list[dict[str, float]]]  # variant name -> metrics per (seed, fold)
    table: str
    seconds: float


def _model_config(cfg: AblationConfig, variant: dict[str, Any]) -> ModelConfig:
    return dataclasses.replace(cfg.model, fusion=variant["fusion"], reuse_block=variant["reuse_block"],
                               residual_attention=bool(variant["residual_attention"]))


def _pretrain(cfg: AblationConfig, model: ModelConfig, seed: int, out_dir: Path) -> tuple[Path, dict[str, float]]:
    run = RunConfig(
        data=DataConfig(events=cfg.experiment.events),
        model=dataclasses.replace(model, n_tokens=0, feature_cardinalities={}, feature_widths={}),
        pretrain=dataclasses.replace(cfg.pretrain, objective="mlm", epochs=cfg.grid.pretrain_epochs),
        train=StageConfig(objective="mlm", epochs=0),
        tracking=TrackingConfig(enabled=False),
        seed=seed, device=cfg.device, threads=cfg.threads, out_dir=str(out_dir),
    )
    res = run_training(run)
    return res.model_dir, {k: v for k, v in res.test_metrics.items() if k.startswith(("test/unseen/ndcg", "time/"))}


def run_ablation(cfg: AblationConfig) -> AblationResult:
    started = time.perf_counter()
    grid = cfg.grid
    variants = grid.variants()
    base = {s: getattr(grid, s)[0] for s in SWITCHES}
    names = [variant_name(v, base) for v in variants]
    runs: dict[str, list[dict[str, float]]] = {}
    cache: dict[tuple, Path] = {}
    parent = Tracker(cfg.tracking)
    with parent, tempfile.TemporaryDirectory(prefix="recbert-ablate-") as tmp:
        parent.start({**cfg.flat(), "n_variants": len(variants)}, run_name=f"ablate-{grid.task}")
        for name, variant in zip(names, variants):
            model_cfg = _model_config(cfg, variant)
            lam = {"none": 0.0, "mlm": grid.aux_lambda_mlm, "head": grid.aux_lambda_head}[variant["aux"]]
            ft = dataclasses.replace(cfg.finetune, aux=variant["aux"], aux_lambda=lam)
            run_cfg = FinetuneRunConfig(experiment=cfg.experiment, model=model_cfg,
                                        head=dataclasses.replace(cfg.head, variant=variant["tower"]),
                                        ctr=CTRConfig(), finetune=ft, tracking=cfg.tracking, threads=cfg.threads,
                                        device=cfg.device)
            vtracker = Tracker(cfg.tracking, parent_run_id=parent.run_id)
            with vtracker:
                vtracker.start({**{f"variant.{k}": v for k, v in variant.items()}, "variant": name}, run_name=name)
                for seed in grid.seeds:
                    model_dir = None
                    if variant["pretrained"]:
                        key = (model_cfg.fusion, model_cfg.reuse_block, model_cfg.residual_attention, seed)
                        if key not in cache:
                            cache[key], pre = _pretrain(cfg, model_cfg, seed, Path(tmp) / f"pre{len(cache)}")
                            vtracker.log_metrics({f"pretrain/{k}": v for k, v in pre.items()}, seed)
                        model_dir = cache[key]
                    seed_cfg = dataclasses.replace(
                        run_cfg, experiment=dataclasses.replace(cfg.experiment, seeds=[seed]))
                    res = run_classification(model_dir, grid.task, seed_cfg,
                                             variants=("pretrained" if variant["pretrained"] else "scratch",),
                                             parent_run_id=vtracker.run_id, run_name=f"{name} seed {seed}")
                    for rows in res.runs.values():
                        runs.setdefault(name, []).extend(rows)
                stats = mean_std(runs.get(name, []))
                vtracker.log_metrics({f"{k}_{s}": v for k, (m, sd) in stats.items()
                                      for s, v in (("mean", m), ("std", sd)) if math.isfinite(v)})
                log.info("ablation %s: %s", name, {k: round(m, 4) for k, (m, _) in stats.items()})
        table = ablation_table(grid.task, names, runs, time.perf_counter() - started)
        parent.log_text(table, "ablation.md")
        if parent.run_id is not None:
            from recbert.evaluation.plots import results_chart  # matplotlib: only here

            parent.log_figure(results_chart(f"ablation ({grid.task})", runs, CLASSIFICATION_METRICS, names),
                              "plots/ablation.png")
    return AblationResult(parent.run_id, grid.task, names, variants, runs, table, time.perf_counter() - started)


def ablation_table(task: str, names: list[str], runs: dict[str, list[dict[str, float]]], seconds: float) -> str:
    table = results_table(f"variant ({task})", runs, CLASSIFICATION_METRICS, names=names)
    return table + f"\nmean ± std over seeds x folds; {seconds:.0f} s in all.\n"

"""Typed run configuration: one tree of dataclasses that travels whole from the
CLI to the model directory and to MLflow params.

* ``RunConfig.from_dict`` rejects unknown keys (with a suggestion) and coerces
  values to the declared types; ``Literal`` fields reject values outside their set.
* ``RunConfig.flat()`` is the flat ``section.key -> value`` view logged to MLflow.
* ``RunConfig.load(path, overrides)`` reads TOML or JSON and applies
  ``section.key=value`` overrides from the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from recbert.data.augmentations import AUGMENTATIONS
from recbert.errors import ConfigError
from recbert.model.blocks import REUSE_BLOCKS
from recbert.model.fusion import FUSIONS, POOL_KINDS
from recbert.training.losses import LOSSES, SAMPLERS

# Choices come from the registries of the modules that build them: a new fusion, reuse
# block or loss is added there and appears here (validation, CLI, ablation grids).
Objective = Literal["mlm", "next_item", "mlm_attributes", "next_item_attributes", "next_item_contrastive",
                    "next_item_augmented"]
Attention = Literal["bidirectional", "causal"]
FusionKind = Literal[tuple(FUSIONS)]
ReuseBlock = Literal[tuple(REUSE_BLOCKS)]
ItemLoss = Literal[tuple(LOSSES)]
Sampler = Literal[SAMPLERS]
Schedule = Literal["linear", "cosine", "constant"]
Augmentation = Literal[tuple(AUGMENTATIONS)]


@dataclass(frozen=True)
class DataConfig:
    """Where the events are and how they become per-user sequences."""

    events: str = "data/ml-100k/events.parquet"
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    # Optional item side features: a parquet with the item column plus categorical
    # columns (scalar or list values), e.g. Beauty's brand/category attributes.
    item_features: Optional[str] = None
    item_feature_columns: list[str] = field(default_factory=list)
    min_item_count: int = 1  # rarer items have no token: they map to UNK (or a hash bucket)
    max_items: Optional[int] = None  # vocabulary cap: only the most frequent items get a token, the rest UNK
    # > 0: items without a token (beyond the cap, under the min count, unseen) go to one of this
    # many shared input tokens by a stable hash of their id instead of UNK (never scored or recommended)
    hash_buckets: int = 0
    min_user_events: int = 2  # users with fewer events are dropped (logged)
    split: Literal["leave_one_out", "time"] = "leave_one_out"
    time_val_fraction: float = 0.1  # global time split: share of events after the val cut
    time_test_fraction: float = 0.1  # ... and after the test cut
    window_stride: Optional[int] = None  # long histories -> windows every `stride` events (None = max_len)
    # Out-of-core: a folder of per-user sequence shards (parquet). When set, training reads
    # them through a streaming dataset instead of holding the sequences in memory; they are
    # written there from `events` first (polars streaming) unless they are already there
    # for the same events and settings.
    shards: Optional[str] = None
    shard_events: int = 2_000_000  # events per shard while writing: bounds the writer's memory
    shuffle_buffer_batches: int = 64  # streaming: windows are shuffled within this many batches
    loader_workers: int = 0  # streaming: DataLoader worker processes reading the shards (0: in the trainer)

    def __post_init__(self) -> None:
        if self.min_item_count < 1:
            raise ConfigError(f"data.min_item_count must be >= 1, got {self.min_item_count}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"data.max_items (the vocabulary cap) must be >= 1 or unset, got {self.max_items}")
        if self.hash_buckets < 0:
            raise ConfigError(f"data.hash_buckets must be >= 0 (0 = off: items without a token read as UNK), "
                              f"got {self.hash_buckets}")
        if self.min_user_events < 1:
            raise ConfigError(f"data.min_user_events must be >= 1, got {self.min_user_events}")
        for name in ("time_val_fraction", "time_test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ConfigError(f"data.{name} must be in (0, 0.5), got {v}")
        if self.window_stride is not None and self.window_stride < 1:
            raise ConfigError(f"data.window_stride must be >= 1, got {self.window_stride}")
        for name in ("shard_events", "shuffle_buffer_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.loader_workers < 0:
            raise ConfigError(f"data.loader_workers must be >= 0, got {self.loader_workers}")
        if self.shards is not None and self.split != "leave_one_out":
            raise ConfigError(f"data.shards (streaming) supports data.split = 'leave_one_out' only, got "
                              f"{self.split!r}; unset data.shards to use the time split in memory")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder. ``n_items`` and the feature sizes are filled from the data."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    max_len: int = 50
    dropout: float = 0.2
    attention_dropout: float = 0.2
    norm: Literal["pre", "post"] = "pre"
    attention: Attention = "bidirectional"  # set by the last training stage
    residual_attention: bool = False  # RealFormer: add the previous layer's scores
    # BSARec's frequency branch beside the attention (model.frequency): each layer mixes
    # filter_mix * (low-pass + beta^2 * high-pass) with (1 - filter_mix) * attention; 0 = off, < 1.
    # The low-pass is a moving average of filter_window positions (causal under causal attention).
    filter_mix: float = 0.0
    filter_window: int = 10
    # true: the causal low-pass under bidirectional attention too (MLM pretraining then learns
    # the branch as next-item fine-tuning uses it); false: a centred window there
    filter_causal: bool = False
    output_transform: bool = True  # dense + GELU + LayerNorm before the tied output
    # Layer fusion of all hidden states (embedding output = layer 0) into the sequence output:
    # 'last' (the last layer only), 'learned' (softmax-weighted sum + dense), or the
    # parameter-free 'mean' / 'max' / 'sum' of the last ``fusion_layers`` states.
    fusion: FusionKind = "last"
    fusion_layers: int = 2
    # Residual feature-reuse block x + f(x) after the encoder; under causal attention (next-item)
    # it reads each position's past only, with the same weights.
    reuse_block: ReuseBlock = "none"
    reuse_kernel_size: int = 3  # reuse_block='cnn': width of the same-length 1-D convolution
    init_std: float = 0.02
    n_tokens: int = 0  # vocabulary size incl. PAD/MASK/UNK and hash buckets, filled from the vocabulary
    hash_buckets: int = 0  # of those, the input-only hash-bucket tokens (data.hash_buckets), filled likewise
    feature_cardinalities: dict[str, int] = field(default_factory=dict)  # values per side feature
    feature_widths: dict[str, int] = field(default_factory=dict)  # max values per item per feature

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "intermediate", "max_len", "reuse_kernel_size", "filter_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check_choice("model.fusion", self.fusion, FUSIONS)
        _check_choice("model.reuse_block", self.reuse_block, REUSE_BLOCKS)
        if self.hidden % self.heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.filter_mix < 1.0:  # at 1 the attention would be dead weight
            raise ConfigError(f"model.filter_mix (share of the frequency branch beside the attention) must be "
                              f"in [0, 1), got {self.filter_mix}")
        if self.fusion in POOL_KINDS and not 1 <= self.fusion_layers <= self.layers + 1:
            raise ConfigError(f"model.fusion_layers must be in [1, {self.layers + 1}] (layers + embeddings), "
                              f"got {self.fusion_layers}")


@dataclass(frozen=True)
class StageConfig:
    """One training stage (MLM pretraining or next-item training)."""

    objective: Objective = "mlm"
    loss: ItemLoss = "full_softmax"  # the catalogue loss at target positions (training.losses.LOSSES)
    # sampled_softmax / gbce: negatives drawn per batch and shared by its positions (memory
    # O(positions x negatives)); negatives = the catalogue size makes every item a candidate
    negatives: int = 256
    negative_sampler: Sampler = "uniform"  # proposal of the negatives: uniform or by popularity
    in_batch_negatives: bool = True  # sampled_softmax: the batch's targets are candidates too
    logq_correction: bool = True  # sampled_softmax: subtract log(expected count) from every logit
    gbce_t: float = 0.75  # gbce calibration t in [0, 1] (0: plain BCE over the sampled negatives)
    # sparse gradients + SparseAdam for the item table: only the batch's items move (sampled losses)
    lazy_item_updates: bool = False
    # bf16: forward passes and losses under bfloat16 autocast (made for GPUs; float32 weights
    # and optimiser); fp32: plain float32
    precision: Literal["fp32", "bf16"] = "fp32"
    epochs: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    schedule: Schedule = "linear"
    grad_clip: float = 1.0
    mask_prob: float = 0.2  # MLM: share of tokens masked
    last_item_mask_prob: float = 0.1  # MLM: share of sequences with only the last item masked
    attribute_weight: float = 1.0  # *_attributes objectives: weight of the attribute losses beside the item loss
    # next_item_contrastive / next_item_augmented: weight and temperature of the InfoNCE term
    # (DuoRec's and CL4SRec's 0.1 and 1)
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 1.0
    contrastive_similarity: Literal["dot", "cosine"] = "dot"  # cosine: views L2-normalised first
    # next_item_augmented (CL4SRec): each view of a window is one of these augmentations
    # (data.augmentations), drawn uniformly; the share of a window's events a crop keeps, a
    # mask hides and a reorder shuffles
    augmentations: list[Augmentation] = field(default_factory=lambda: list(AUGMENTATIONS))
    crop_keep: float = 0.6
    mask_share: float = 0.3
    reorder_share: float = 0.3
    label_smoothing: float = 0.0  # full_softmax: the target is (1 - eps) one-hot + eps uniform over the catalogue
    layer_decay: float = 1.0  # layer-wise lr decay: layer i of n trains at lr * layer_decay ** (n - i), embeddings = 0
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between validation runs
    max_minutes: Optional[float] = None  # wall-time budget for the stage

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise ConfigError("stage epochs must be >= 0 and batch_size, eval_every, patience >= 1")
        _check_choice("stage loss", self.loss, LOSSES)
        _check_choice("stage negative_sampler", self.negative_sampler, SAMPLERS)
        if self.negatives < 1:
            raise ConfigError(f"stage negatives must be >= 1, got {self.negatives}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"stage gbce_t must be in [0, 1], got {self.gbce_t}")
        if self.lazy_item_updates and self.loss == "full_softmax":
            raise ConfigError("stage lazy_item_updates needs a sampled loss (sampled_softmax or gbce): the full "
                              "softmax's gradient reaches every item")
        if self.lr <= 0:
            raise ConfigError(f"stage lr must be > 0, got {self.lr}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"stage mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.last_item_mask_prob <= 1.0:
            raise ConfigError(f"stage last_item_mask_prob must be in [0, 1], got {self.last_item_mask_prob}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"stage layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"stage label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "full_softmax":
            raise ConfigError(f"stage label_smoothing works with loss = 'full_softmax', not {self.loss!r}")
        if self.contrastive_weight < 0:
            raise ConfigError(f"stage contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.contrastive_temperature <= 0:
            raise ConfigError(f"stage contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        if self.attribute_weight < 0:
            raise ConfigError(f"stage attribute_weight must be >= 0, got {self.attribute_weight}")
        if not self.augmentations:
            raise ConfigError(f"stage augmentations must name at least one of {sorted(AUGMENTATIONS)}")
        for kind in self.augmentations:
            _check_choice("stage augmentations", kind, AUGMENTATIONS)
        for key in ("crop_keep", "mask_share", "reorder_share"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"stage {key} must be in (0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"stage warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class EvalConfig:
    """Full-ranking evaluation. Both protocols are always reported; ``exclude_seen``
    picks the one used for model selection and the headline figures."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    exclude_seen: bool = False  # False: rank against all items; True: history items removed
    select_metric: str = "ndcg@10"
    sampled_negatives: int = 100  # sampled protocol (0 = off)
    batch_size: int = 1024
    # Items scored at a time: a batch holds batch_size x item_chunk float32 scores, never
    # batch_size x n_items. None: the most items that keep those scores within 256 MiB
    # (65,536 at batch_size 1024: one chunk for catalogues up to that size).
    item_chunk: Optional[int] = None
    # A parquet file whose item column (data.item_col) lists the items to rank, e.g. the
    # items on sale or a target catalogue; validation and test rank among them only, and a
    # target outside them is a miss (recbert.evaluation.candidates). None: every item.
    candidates: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive integers, got {self.ks}")
        name, _, k = self.select_metric.partition("@")
        if name not in ("ndcg", "hr", "mrr") or (name != "mrr" and (not k.isdigit() or int(k) not in self.ks)):
            raise ConfigError(
                f"eval.select_metric {self.select_metric!r} must be 'mrr' or 'ndcg@k'/'hr@k' with k in eval.ks {self.ks}"
            )
        if self.item_chunk is not None and self.item_chunk < 1:
            raise ConfigError(f"eval.item_chunk must be >= 1 items (or unset for automatic), got {self.item_chunk}")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    experiment: str = "recbert"
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    run_name: Optional[str] = None
    # register the trained model under this name in the MLflow model registry (a new version
    # per run, its test metrics in the description); None: not registered
    register_as: Optional[str] = None


@dataclass(frozen=True)
class CheckpointConfig:
    """Crash-safe training (:mod:`recbert.training.checkpoints`): the loop's whole state is
    written under ``{out_dir}/checkpoints/{run}/`` after every epoch and every
    ``every_steps`` optimiser steps; `recbert train --resume RUN` continues from the newest."""

    enabled: bool = True
    every_steps: int = 0  # also every N steps within an epoch (0: at epoch ends only)
    keep_last: int = 2  # checkpoint files kept per run (older ones are deleted)
    keep_when_finished: bool = False  # False: a run that finishes deletes its checkpoints (nothing to resume)

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"checkpoint.every_steps must be >= 0 (0: at epoch ends only), got {self.every_steps}")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one `recbert train` run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(objective="mlm", epochs=0))
    train: StageConfig = field(default_factory=lambda: StageConfig(objective="mlm", epochs=30))
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 42
    device: str = "auto"
    threads: Optional[int] = None  # torch intra-op threads (None: torch default)
    out_dir: str = "runs"  # model directories are written under here
    # After selection on validation: train the last stage again from the weights it started
    # from, on the training sequences plus each validation user's target, for the epochs
    # validation chose (no validation then), and test that model. The selected model's test
    # metrics are kept beside it as test_selected/*. In-memory data only.
    refit: bool = False
    # A model folder written by `recbert train` (the one its `model:` line names): the run
    # starts from its weights, vocabulary and feature tables instead of a fresh model
    # (recbert.model.warm_start), e.g. to fine-tune on a narrow log what was pretrained on a
    # broad one. The [model] section must be the saved model's (only the dropout rates may
    # differ); data.min_item_count / max_items / hash_buckets do not apply (the saved
    # vocabulary reads the events; with data.shards the shards are written with it).
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        if self.refit and self.data.shards is not None:
            raise ConfigError("refit = true works on in-memory sequences only; unset data.shards or refit")

    # -- views -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``section.key -> scalar`` (lists and dicts as JSON), for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                key = f"{prefix}{f.name}"
                if dataclasses.is_dataclass(value):
                    walk(key + ".", value)
                elif isinstance(value, (list, dict)):
                    out[key] = json.dumps(value, sort_keys=True)
                else:
                    out[key] = value

        walk("", self)
        return out

    # -- constructors -------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        return build_section(cls, raw, "", cls())

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "RunConfig":
        return load_config(cls, path, overrides or [])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _check_choice(what: str, value: Any, registry: Any) -> None:
    if value not in registry:
        raise ConfigError(f"{what} must be one of {list(registry)}, got {value!r}")


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """A config dataclass from TOML/JSON plus ``section.key=value`` overrides (strict keys)."""
    raw = read_config_file(path) if path is not None else {}
    return build_section(cls, parse_overrides(list(overrides), raw), "", cls())


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's keys; a top-level ``extends = "other.toml"`` (relative to the file) reads
    that file first and lays this one's keys over it, section by section."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    if p.resolve() in _seen:
        raise ConfigError(f"config file {p} extends itself (through {' -> '.join(map(str, _seen))})")
    try:
        if p.suffix == ".toml":
            raw = tomllib.loads(p.read_text())
        elif p.suffix == ".json":
            raw = json.loads(p.read_text())
        else:
            raise ConfigError(f"config file {p} must be .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:].upper()}: {exc}") from None
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config file {p}: extends must be a file name, got {base!r}")
    return _merge(read_config_file(p.parent / base, (*_seen, p.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_overrides(overrides: list[str], raw: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as JSON where they can be) to ``raw``."""
    raw = raw if raw is not None else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_path(raw, key.strip(), _parse_scalar(value.strip()))
    return raw


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def build_section(cls: type, raw: Any, prefix: str, base: Any) -> Any:
    """Dataclass ``cls`` from ``raw``; keys absent from ``raw`` keep ``base``'s values."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {where!r}{hint}")
        sub = getattr(base, key)
        if dataclasses.is_dataclass(sub):
            kwargs[key] = build_section(type(sub), value, where + ".", sub)
        else:
            kwargs[key] = _coerce(hints[key], value, where)
    try:
        return dataclasses.replace(base, **kwargs)
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"config section {prefix or '<root>'!r}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {where!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where!r} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a table, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {where!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or isinstance(value, float):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {where!r} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key {where!r} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {where!r} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be a string, got {value!r}")
        return str(value)
    return value

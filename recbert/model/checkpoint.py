"""A saved model directory and what travels with it: the recommender's own files
(``config.json``, ``model.safetensors``, ``vocab.parquet``, see
:meth:`SequenceRecommender.save_pretrained`) plus the run config and test metrics
that ``recbert train`` writes beside them.

* ``load_run_config(dir)``: the :class:`RunConfig` a model was trained with;
* ``resolve_model_dir(model_dir, run_id)``: a directory, or the model an MLflow run logged;
* ``load_encoder(dir)`` / ``check_compatible(model, vocab_or_n_tokens, hidden)``: a
  pretrained recommender, checked to fit what a head or its data expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import nn

from recbert.config import ModelConfig, RunConfig, TrackingConfig
from recbert.data.vocab import ItemVocab, catalogue_size
from recbert.errors import CheckpointError
from recbert.model.recommender import SequenceRecommender

RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.json"


def load_run_config(model_dir: str | Path) -> Optional[RunConfig]:
    """The RunConfig saved beside a model by `recbert train` (None when absent)."""
    path = Path(model_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return RunConfig.from_dict(raw)


def resolve_model_dir(model_dir: Optional[str | Path] = None, run_id: Optional[str] = None,
                      tracking: Optional[TrackingConfig] = None) -> Path:
    """``model_dir`` itself, or the model directory logged by MLflow run ``run_id``
    (downloaded); exactly one of the two must be given."""
    if (model_dir is None) == (run_id is None):
        raise CheckpointError("give exactly one of a model directory or an MLflow run id")
    if model_dir is not None:
        return Path(model_dir)
    from recbert.tracking import download_model  # MLflow is slow to import: only for run ids

    return download_model(run_id, tracking)


def load_encoder(model_dir: str | Path) -> SequenceRecommender:
    """The pretrained SequenceRecommender saved in ``model_dir`` (eval mode, vocab attached)."""
    d = Path(model_dir)
    if not d.exists():
        raise CheckpointError(f"pretrained model directory {d} does not exist")
    if not d.is_dir():
        raise CheckpointError(f"pretrained model path {d} is not a directory")
    return SequenceRecommender.from_pretrained(d)


def model_config_of(model: nn.Module) -> ModelConfig:
    """The ModelConfig of a recommender or of a head model (its backbone's)."""
    cfg = getattr(model, "model_config", None) or getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} carries no ModelConfig")
    return cfg


def check_compatible(model: nn.Module, vocab_or_n_tokens: ItemVocab | int | None = None,
                     hidden: Optional[int] = None) -> None:
    """Raise CheckpointError when the pretrained encoder's vocabulary (size, or item ids when
    both sides have a vocabulary) or width differs from what the head / its data expects."""
    cfg = model_config_of(model)
    if vocab_or_n_tokens is not None:
        expected = len(vocab_or_n_tokens) if isinstance(vocab_or_n_tokens, ItemVocab) else int(vocab_or_n_tokens)
        if expected != cfg.n_tokens:
            raise CheckpointError(
                f"vocabulary size mismatch: the pretrained encoder has n_tokens={cfg.n_tokens} "
                f"({catalogue_size(cfg.n_tokens, cfg.hash_buckets)} items) but the head's data expects {expected}; "
                "encode the fine-tuning data with the pretrained model's vocabulary (model.vocab.encode)")
        own = getattr(model, "vocab", None)
        if isinstance(vocab_or_n_tokens, ItemVocab) and own is not None and own != vocab_or_n_tokens:
            raise CheckpointError("vocabulary mismatch: the pretrained encoder and the head's data have the same "
                                  "number of tokens but different item ids (or hash buckets)")
    if hidden is not None and int(hidden) != cfg.hidden:
        raise CheckpointError(f"width mismatch: the pretrained encoder has hidden={cfg.hidden} "
                              f"but the head expects hidden={hidden}")

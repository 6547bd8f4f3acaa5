"""Batch job: load a trained model (model directory or MLflow run id) and
evaluate it by full ranking on the test split of an events file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from recbert.config import EvalConfig, TrackingConfig
from recbert.errors import CheckpointError
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.recommender import SequenceRecommender
from recbert.tracking import download_model
from pipelines.train import RUN_CONFIG_FILE, load_run_config, prepare_data, resolve_device

log = logging.getLogger("recbert.pipeline")


def resolve_model_dir(model_dir: Optional[str] = None, run_id: Optional[str] = None,
                      tracking: Optional[TrackingConfig] = None) -> Path:
    if (model_dir is None) == (run_id is None):
        raise CheckpointError("give exactly one of a model directory or an MLflow run id")
    return Path(model_dir) if model_dir else download_model(run_id, tracking)


def run_evaluation(model_dir: Path, events: Optional[str] = None, split: Optional[str] = None,
                   eval_config: Optional[EvalConfig] = None, device: str = "auto") -> dict[str, float]:
    """Test metrics of the model in ``model_dir`` on ``events`` (default: the
    events it was trained on), split as in training unless ``split`` is given.
    The model's own vocabulary is used: unseen items in the file become UNK."""
    model = SequenceRecommender.from_pretrained(model_dir)
    config = load_run_config(model_dir)
    if config is None:
        raise CheckpointError(f"model directory {model_dir} has no {RUN_CONFIG_FILE}")
    if split is not None:
        config.data.split = split
    eval_config = eval_config or config.eval
    target = resolve_device(device)
    _, splits = prepare_data(config, events, vocab=model.vocab)
    model.to(target)
    return evaluate_ranking(model, splits.test, eval_config, seed=config.seed, device=target)


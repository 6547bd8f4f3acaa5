"""Batch job: load a trained model (model directory or MLflow run id) and
evaluate it by full ranking on the test split of an events file."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from recbert.config import EvalConfig
from recbert.data.prepare import prepare_data
from recbert.errors import CheckpointError
from recbert.evaluation.candidates import with_candidates
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.checkpoint import RUN_CONFIG_FILE, load_run_config
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import resolve_device

log = logging.getLogger("recbert.pipeline")


def run_evaluation(model_dir: Path, events: Optional[str] = None, split: Optional[str] = None,
                   eval_config: Optional[EvalConfig] = None, device: str = "auto") -> dict[str, float]:
    """Test metrics of the model in ``model_dir`` on ``events`` (default: the
    events it was trained on), split as in training unless ``split`` is given.
    The model's own vocabulary is used: unseen items in the file become UNK (or their hash bucket)."""
    model = SequenceRecommender.from_pretrained(model_dir)
    config = load_run_config(model_dir)
    if config is None:
        raise CheckpointError(f"model directory {model_dir} has no {RUN_CONFIG_FILE}")
    if split is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, split=split))
    eval_config = eval_config or config.eval
    target = resolve_device(device)
    _, splits = prepare_data(config, events, vocab=model.vocab)
    splits = with_candidates(splits, eval_config.candidates, model.vocab, config.data.item_col)
    model.to(target)
    return evaluate_ranking(model, splits.test, eval_config, seed=config.seed, device=target)


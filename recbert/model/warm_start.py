"""Start a run from a saved model (``init_from``): its weights, vocabulary and side-feature
tables, checked against the run's own settings, so that one model pretrained on a broad log
can be fine-tuned on a narrower one (or an old model warm-started on fresh events).

The saved model decides what the data decides (the vocabulary and the feature tables); the
run's ``[model]`` section must describe the same network, except the dropout rates, which are
training settings, and the attention pattern, which each training stage sets."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import torch

from recbert.config import ConfigError, ModelConfig
from recbert.data.features import load_item_features
from recbert.data.vocab import ItemVocab
from recbert.model.recommender import VOCAB_FILE, SequenceRecommender

# filled from the saved vocabulary and feature tables
DATA_DECIDED = ("n_tokens", "hash_buckets", "feature_cardinalities", "feature_widths")
# may differ from the saved model's: the run's values are used
RUN_DECIDED = ("dropout", "attention_dropout", "attention")

log = logging.getLogger("recbert.model")


def warm_start(directory: str | Path, model: ModelConfig, item_features: Optional[str] = None,
               item_col: str = "item_id", feature_columns: tuple[str, ...] | list[str] = ()) -> SequenceRecommender:
    """The model saved in ``directory`` (``recbert train``'s model folder), rebuilt with the
    run's dropout rates, for training to continue from. ``model`` is the run's ``[model]``
    section: every other setting must equal the saved one. ``item_features``: the run's item
    features file (``data.item_features``), if any: its tables for the saved vocabulary must
    be the ones the model was saved with."""
    saved = SequenceRecommender.from_pretrained(directory)
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name not in DATA_DECIDED + RUN_DECIDED and getattr(saved.config, f.name) != getattr(model, f.name)]
    if differ:
        pairs = ", ".join(f"model.{n} = {getattr(saved.config, n)!r} (this run: {getattr(model, n)!r})" for n in differ)
        raise ConfigError(f"init_from: the model in {directory} was trained with {pairs}; "
                          "use the [model] settings it was trained with (only the dropout rates may change)")
    if item_features and feature_columns:
        check_feature_tables(saved, directory, item_features, item_col, list(feature_columns))
    elif saved.config.feature_cardinalities:
        raise ConfigError(f"init_from: the model in {directory} reads item features "
                          f"{sorted(saved.config.feature_cardinalities)}; name them in this run too "
                          "(data.item_features and data.item_feature_columns)")
    config = dataclasses.replace(saved.config, **{n: getattr(model, n) for n in RUN_DECIDED})
    started = SequenceRecommender(config)
    started.load_state_dict(saved.state_dict())
    started.vocab = saved.vocab
    started.train()
    log.info("starting from the model in %s (%d items%s)", directory, saved.vocab.n_items,
             f", item features {sorted(config.feature_cardinalities)}" if config.feature_cardinalities else "")
    return started


def saved_vocab(directory: str | Path) -> ItemVocab:
    """The item vocabulary of the model saved in ``directory``, without its weights (e.g. to
    write the sequence shards a run with ``init_from`` will read)."""
    return ItemVocab.load(Path(directory) / VOCAB_FILE)


def check_feature_tables(saved: SequenceRecommender, directory: str | Path, path: str, item_col: str,
                         columns: list[str]) -> None:
    """The run's item features, read for the saved vocabulary, must be the saved model's
    tables (same columns, same values per item)."""
    names = sorted(saved.config.feature_cardinalities)
    if not names:
        raise ConfigError(f"init_from: the model in {directory} was trained without item features; this run names "
                          f"{sorted(columns)} (unset data.item_feature_columns)")
    if sorted(columns) != names:
        raise ConfigError(f"init_from: the model in {directory} reads item features {names}; this run names "
                          f"{sorted(columns)} (data.item_feature_columns)")
    for table in load_item_features(path, item_col, columns, saved.vocab):
        kept = getattr(saved.embeddings, f"feature_table_{table.name}")
        if tuple(kept.shape) != table.table.shape or not torch.equal(kept, torch.from_numpy(table.table)):
            raise ConfigError(f"init_from: item feature {table.name!r} in {path} differs from the one the model in "
                              f"{directory} was trained with; use the same item features file")

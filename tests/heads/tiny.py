"""A tiny SequenceRecommender for head tests (shared by the tests of recbert/heads)."""

from __future__ import annotations

import numpy as np
import torch

from recbert.config import ModelConfig
from recbert.data.vocab import ItemVocab
from recbert.model.recommender import SequenceRecommender


def tiny_backbone(seed: int = 0, n_items: int = 20, string_ids: bool = False, **overrides) -> SequenceRecommender:
    """hidden 16, 2 layers, max_len 8, no dropout unless overridden; item ids 100.. (or
    'item0'.. with ``string_ids``); the vocabulary is attached."""
    ids = np.array([f"item{i}" for i in range(n_items)], dtype=object) if string_ids else np.arange(100, 100 + n_items)
    vocab = ItemVocab(ids)
    settings = {"hidden": 16, "layers": 2, "heads": 2, "intermediate": 32, "max_len": 8, "dropout": 0.0,
                "attention_dropout": 0.0, **overrides, "n_tokens": len(vocab)}
    torch.manual_seed(seed)
    model = SequenceRecommender(ModelConfig(**settings))
    model.vocab = vocab
    return model

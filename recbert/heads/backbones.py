"""Fresh backbones for fine-tuning experiments: per (variant, seed, fold) either a
deep copy of the pretrained encoder or a newly initialised SequenceRecommender with
the same ModelConfig and vocabulary ('scratch')."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

import torch

from recbert.config import ModelConfig
from recbert.data.vocab import ItemVocab
from recbert.errors import ConfigError
from recbert.model.checkpoint import load_encoder
from recbert.model.recommender import SequenceRecommender

VARIANTS = ("pretrained", "scratch")


class Backbones:
    """Fresh backbones per (variant, seed, fold): the pretrained encoder (a deep copy) or a
    newly initialised SequenceRecommender with the same ModelConfig and vocabulary."""

    def __init__(self, model_dir: Optional[str | Path], model_config: ModelConfig, events: str):
        if model_dir is not None:
            self.base: Optional[SequenceRecommender] = load_encoder(model_dir)
            self.vocab: ItemVocab = self.base.vocab
            self.config = self.base.config
        else:
            from recbert.data.events import load_events

            self.base = None
            self.vocab = ItemVocab.build(load_events(events)["item_id"])
            self.config = dataclasses.replace(model_config, n_tokens=len(self.vocab), hash_buckets=0,
                                              feature_cardinalities={}, feature_widths={})

    def make(self, variant: str, seed: int) -> SequenceRecommender:
        """A fresh backbone; also seeds torch so the head built next (and dropout) is reproducible."""
        torch.manual_seed(seed)
        if variant == "pretrained":
            if self.base is None:
                raise ConfigError("the 'pretrained' variant needs a model directory (--model-dir / --run-id); "
                                  "use --scratch to train from scratch")
            return copy.deepcopy(self.base).train()
        if variant != "scratch":
            raise ConfigError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
        model = SequenceRecommender(copy.deepcopy(self.config))
        if self.base is not None:  # keep non-learned buffers (item feature tables)
            buffers = dict(self.base.named_buffers())
            model.load_state_dict({k: v.clone() for k, v in buffers.items()}, strict=False)
        model.vocab = self.vocab
        return model.train()

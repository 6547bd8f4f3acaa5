"""Shared plumbing for task heads on top of a (pretrained) SequenceRecommender.

A head model takes the recommender's parts (embeddings, encoder, fusion, reuse block and,
optionally, the tied item scorer) as its own submodules: the very same module objects, so
pretrained weights are used as they are, and ``encode`` gives exactly the recommender's
``forward(input_ids, causal=False)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from recbert.config import ModelConfig
from recbert.data.batches import left_pad
from recbert.data.vocab import ItemVocab
from recbert.errors import CheckpointError, DataError
from recbert.model.encoder import EncoderOutput
from recbert.model.recommender import SequenceRecommender

BACKBONE_PARTS = ("embeddings", "encoder", "fusion", "reuse", "scorer")


class EncoderHeadModel(nn.Module):
    """Base class: holds a recommender's parts; subclasses add pooling and a tower."""

    def __init__(self, backbone: SequenceRecommender, keep_scorer: bool = True):
        super().__init__()
        if not isinstance(backbone, SequenceRecommender):
            raise TypeError(f"backbone must be a SequenceRecommender, got {type(backbone).__name__}")
        self.model_config: ModelConfig = backbone.config
        self.embeddings = backbone.embeddings
        self.encoder = backbone.encoder
        self.fusion = backbone.fusion
        self.reuse = backbone.reuse
        # The scorer (tied to embeddings.item) is only needed for the MLM auxiliary loss.
        self.scorer: Optional[nn.Module] = backbone.scorer if keep_scorer else None
        self.vocab: Optional[ItemVocab] = backbone.vocab

    @property
    def n_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def hidden(self) -> int:
        return self.model_config.hidden

    @property
    def n_tokens(self) -> int:
        return self.model_config.n_tokens

    def encode(self, input_ids: Tensor, causal: bool = False) -> EncoderOutput:
        """The recommender's forward pass (bidirectional by default) over left-padded rows."""
        self._check_tokens(input_ids, "input_ids")
        out = self.encoder(self.embeddings(input_ids), input_ids, causal)
        out.sequence_output = self.reuse(self.fusion(out.hidden_states, out.padding_mask), out.padding_mask)
        return out

    def _check_tokens(self, tokens: Tensor, what: str) -> None:
        if tokens.dtype not in (torch.int64, torch.int32):
            raise DataError(f"{what} must hold integer token indices, got dtype {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.n_tokens):
            bad = tokens[(tokens < 0) | (tokens >= self.n_tokens)].unique()[:5].tolist()
            raise DataError(f"{what} holds token indices outside [0, {self.n_tokens}): {bad}")

    def rows(self, histories: Sequence[Sequence] | Sequence[np.ndarray], encode_ids: bool = True) -> Tensor:
        """Left-padded ``[B, <= max_len]`` rows from histories (oldest first) of ORIGINAL item
        ids (mapped through the vocabulary, unknown ids -> UNK) or, with
        ``encode_ids=False``, of tokens. The newest ``max_len`` events are kept."""
        if encode_ids and self.vocab is None:
            raise CheckpointError("this model has no vocabulary attached; load the encoder with from_pretrained")
        toks = [
            self.vocab.encode(np.asarray(h, dtype=object if self.vocab.is_string else None)) if encode_ids
            else np.asarray(h, dtype=np.int64)
            for h in histories
        ]
        return rows_from_tokens(toks, self.model_config.max_len)


def rows_from_tokens(tokens: Sequence[np.ndarray], width: int) -> Tensor:
    """Left-padded int64 rows (the last ``width`` tokens of each sequence)."""
    lens = np.array([len(t) for t in tokens], dtype=np.int64)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens]) if len(tokens) else np.zeros(0, np.int64)
    ends = np.cumsum(lens)
    return torch.from_numpy(left_pad(flat, ends - lens, ends, width))


def backbone_parameter_names(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters that belong to the pretrained parts."""
    return {n for n, _ in model.named_parameters() if n.split(".", 1)[0] in BACKBONE_PARTS}

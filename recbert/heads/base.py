"""Shared plumbing for task heads on top of a (pretrained) SequenceRecommender.

A head model holds the recommender itself as its ``backbone`` submodule (the very same
object, so pretrained weights are used as they are) and ``encode`` calls the recommender's
``forward(input_ids, causal=False)``: a head follows any change of the recommender's
forward pass. Backbone parameters are named ``backbone.<part>....``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from recbert.config import ModelConfig
from recbert.data.batches import left_pad
from recbert.data.vocab import MASK, ItemVocab
from recbert.errors import CheckpointError, DataError, RecbertError
from recbert.model.encoder import EncoderOutput
from recbert.model.checkpoint import check_compatible, load_encoder
from recbert.model.recommender import SequenceRecommender, backbone_part

HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head.json", "head.safetensors"
HEAD_FORMAT = "recbert-head"
HEAD_KINDS: dict[str, type["EncoderHeadModel"]] = {}

class EncoderHeadModel(nn.Module):
    """Base class: holds a recommender (``backbone``); subclasses add pooling and a tower.

    A fine-tuned head saves with ``save_pretrained(dir)``: the (fine-tuned) recommender's
    own files (``config.json``, ``model.safetensors``, ``vocab.parquet``: the directory is
    also a valid recommender directory) plus ``head.json`` (kind, head config, metadata)
    and ``head.safetensors`` (the head's weights). ``load_head(dir)`` or
    ``<HeadClass>.from_pretrained(dir)`` brings it back.
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            HEAD_KINDS[cls.kind] = cls

    def __init__(self, backbone: SequenceRecommender, keep_scorer: bool = True):
        super().__init__()
        if not isinstance(backbone, SequenceRecommender):
            raise TypeError(f"backbone must be a SequenceRecommender, got {type(backbone).__name__}")
        self.backbone = backbone
        # The scorer (tied to embeddings.item) is only needed for the MLM auxiliary loss.
        self.keep_scorer = keep_scorer
        self.vocab: Optional[ItemVocab] = backbone.vocab
        # free-form JSON facts saved with the head (task, class names, metrics, ...)
        self.metadata: dict[str, Any] = {}

    # the recommender's parts, read-only views
    @property
    def model_config(self) -> ModelConfig:
        return self.backbone.config

    @property
    def embeddings(self) -> nn.Module:
        return self.backbone.embeddings

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.encoder

    @property
    def fusion(self) -> nn.Module:
        return self.backbone.fusion

    @property
    def reuse(self) -> nn.Module:
        return self.backbone.reuse

    @property
    def scorer(self) -> Optional[nn.Module]:
        return self.backbone.scorer if self.keep_scorer else None

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
        return self.backbone(input_ids, causal=causal)

    def with_mask(self, input_ids: Tensor) -> Tensor:
        """Left-padded rows with a [MASK] appended (the slot a cloze model predicts the
        next item from: its state is the model's user vector); the oldest column is
        dropped when the row would exceed ``max_len``."""
        if input_ids.shape[1] >= self.model_config.max_len:
            input_ids = input_ids[:, input_ids.shape[1] - self.model_config.max_len + 1:]
        mask = torch.full((input_ids.shape[0], 1), MASK, dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, mask], dim=1)

    def _check_tokens(self, tokens: Tensor, what: str) -> None:
        if tokens.dtype not in (torch.int64, torch.int32):
            raise DataError(f"{what} must hold integer token indices, got dtype {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.n_tokens):
            bad = tokens[(tokens < 0) | (tokens >= self.n_tokens)].unique()[:5].tolist()
            raise DataError(f"{what} holds token indices outside [0, {self.n_tokens}): {bad}")

    def rows(self, histories: Sequence[Sequence] | Sequence[np.ndarray], encode_ids: bool = True) -> Tensor:
        """Left-padded ``[B, <= max_len]`` rows from histories (oldest first) of ORIGINAL item
        ids (mapped through the vocabulary, unknown ids -> UNK or a hash bucket) or, with
        ``encode_ids=False``, of tokens. The newest ``max_len`` events are kept."""
        if encode_ids and self.vocab is None:
            raise CheckpointError("this model has no vocabulary attached; load the encoder with from_pretrained")
        toks = [
            self.vocab.encode(np.asarray(h, dtype=object if self.vocab.is_string else None)) if encode_ids
            else np.asarray(h, dtype=np.int64)
            for h in histories
        ]
        return rows_from_tokens(toks, self.model_config.max_len)

    # -- persistence ---------------------------------------------------------------------------
    def head_state(self) -> dict[str, Tensor]:
        """The head's own tensors (everything outside ``backbone.``)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if backbone_part(k) is None}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the fine-tuned encoder, the head's config and weights and ``metadata`` to
        ``directory`` in one atomic step (nothing half-written on failure)."""
        if not self.kind:
            raise TypeError(f"{type(self).__name__} sets no head kind; it cannot be saved")
        card = {"format": HEAD_FORMAT, "version": 1, "kind": self.kind,
                "head": self.head_config.to_dict(), "keep_scorer": self.keep_scorer, "metadata": self.metadata}
        try:
            text = json.dumps(card, indent=2, sort_keys=True, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise DataError(f"head metadata must be plain JSON values (str, numbers, lists, dicts): {exc}") from None
        weights = save_safetensors(self.head_state(), metadata={"format": "pt", "recbert_head": self.kind})
        return self.backbone.save_pretrained(directory, vocab=self.vocab,
                                             extra={HEAD_CONFIG_FILE: text, HEAD_WEIGHTS_FILE: weights})

    @classmethod
    def _on_encoder(cls, model_dir: str | Path, cfg: Any, expect_n_tokens: Optional[int],
                    expect_hidden: Optional[int], keep_scorer: bool) -> "EncoderHeadModel":
        """A new head (``cfg``) on the encoder saved in ``model_dir``, checked against the
        expected vocabulary size / width when given; in train mode."""
        backbone = load_encoder(model_dir)
        if expect_n_tokens is not None or expect_hidden is not None:
            check_compatible(backbone, expect_n_tokens, expect_hidden)
        return cls(backbone, cfg, keep_scorer=keep_scorer).train()

    @classmethod
    def _load_saved(cls, directory: str | Path, map_location: str = "cpu") -> "EncoderHeadModel":
        d = Path(directory)
        card = read_head_card(d)
        kind = card["kind"]
        if kind not in HEAD_KINDS:
            raise CheckpointError(f"{d / HEAD_CONFIG_FILE}: unknown head kind {kind!r}; known: {sorted(HEAD_KINDS)}")
        klass = HEAD_KINDS[kind]
        if cls is not EncoderHeadModel and not issubclass(klass, cls):
            raise CheckpointError(f"{d} holds a {kind!r} head ({klass.__name__}), not a {cls.__name__}; "
                                  "load it with recbert.heads.load_head")
        try:
            cfg = klass.config_class.from_dict(card.get("head") or {})
        except RecbertError as exc:
            raise CheckpointError(f"{d / HEAD_CONFIG_FILE}: {exc}") from None
        backbone = SequenceRecommender.from_pretrained(d, map_location=map_location)
        model = klass(backbone, cfg, keep_scorer=bool(card.get("keep_scorer", True)))
        try:
            state = load_safetensors((d / HEAD_WEIGHTS_FILE).read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"model directory {d} has {HEAD_CONFIG_FILE} but no {HEAD_WEIGHTS_FILE}") from None
        except Exception as exc:
            raise CheckpointError(f"{d / HEAD_WEIGHTS_FILE} is not a readable safetensors file: {exc}") from None
        expected = model.head_state()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{d / HEAD_WEIGHTS_FILE} does not fit the {kind} head in {HEAD_CONFIG_FILE}: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
        if bad:
            k = bad[0]
            raise CheckpointError(f"{d / HEAD_WEIGHTS_FILE}: {k} has shape {tuple(state[k].shape)}, "
                                  f"the head config needs {tuple(expected[k].shape)}")
        model.load_state_dict({k: v.to(map_location) for k, v in state.items()}, strict=False)
        model.metadata = dict(card.get("metadata") or {})
        return model.eval()


def read_head_card(directory: str | Path) -> dict[str, Any]:
    """The parsed ``head.json`` of a saved head directory (clear errors when absent/corrupt)."""
    d = Path(directory)
    path = d / HEAD_CONFIG_FILE
    if not d.is_dir():
        raise CheckpointError(f"head model directory {d} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{d} holds no fine-tuned head ({HEAD_CONFIG_FILE} missing)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != HEAD_FORMAT or "kind" not in card:
        raise CheckpointError(f"{path} is not a recbert head card (format {HEAD_FORMAT!r} with a 'kind')")
    return card


def load_head(directory: str | Path, map_location: str = "cpu") -> EncoderHeadModel:
    """A saved fine-tuned head (classifier or CTR model, by ``head.json``), in eval mode."""
    return EncoderHeadModel._load_saved(directory, map_location)


def rows_from_tokens(tokens: Sequence[np.ndarray], width: int) -> Tensor:
    """Left-padded int64 rows (the last ``width`` tokens of each sequence)."""
    lens = np.array([len(t) for t in tokens], dtype=np.int64)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens]) if len(tokens) else np.zeros(0, np.int64)
    ends = np.cumsum(lens)
    return torch.from_numpy(left_pad(flat, ends - lens, ends, width))

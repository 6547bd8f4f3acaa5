"""The sequence recommender: embeddings -> encoder -> tied item scorer.

``SequenceRecommender(config)`` builds the default parts; any part can be
injected instead. A model directory holds ``config.json`` (the ModelConfig),
``model.safetensors`` and ``vocab.parquet``: weights, config and id mapping
always travel together.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from recbert.config import ModelConfig, build_section
from recbert.data.batches import concat_rows, left_pad
from recbert.data.vocab import MASK, N_SPECIAL, ItemVocab, catalogue_size
from recbert.digest import verify_manifest, write_manifest
from recbert.errors import CheckpointError, ConfigError, RecbertError
from recbert.finite import require_finite
from recbert.io import atomic_dir
from recbert.model.blocks import build_reuse_block
from recbert.model.catalogue import ItemSets, item_chunk_size, item_chunks, merge_top_k
from recbert.model.embeddings import SequenceEmbeddings
from recbert.model.encoder import Encoder, EncoderOutput
from recbert.model.fusion import build_fusion

CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.parquet"



BACKBONE_PARTS = ("embeddings", "encoder", "fusion", "reuse", "scorer")
BACKBONE_PREFIX = "backbone."


def backbone_part(name: str) -> Optional[str]:
    """The recommender part (``'embeddings'``, ``'encoder'``, ...) a head-model parameter
    name belongs to, with the ``backbone.`` prefix removed; None for head parameters."""
    if not name.startswith(BACKBONE_PREFIX):
        return None
    return name[len(BACKBONE_PREFIX):]


class ItemScorer(nn.Module):
    """Scores hidden vectors against every real item: ``T(h) @ E[items].T + b``,
    with ``E`` the (tied) input item table and ``T`` an optional dense+GELU+LN.
    The specials and the hash buckets (input-only tokens, after the items) are
    never scored.
    :meth:`score` and :meth:`top_k` take the catalogue a chunk of items at a time
    (``recbert.model.catalogue``), so memory is bounded for any catalogue size."""

    def __init__(self, config: ModelConfig, item_table: nn.Embedding):
        super().__init__()
        self.item_table = item_table
        self.transform = (
            nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.LayerNorm(config.hidden))
            if config.output_transform else nn.Identity()
        )
        self.n_items = catalogue_size(config.n_tokens, config.hash_buckets)
        self.bias = nn.Parameter(torch.zeros(self.n_items))

    def query(self, hidden: Tensor) -> Tensor:
        """The vector that is dotted with item vectors (the user embedding)."""
        return self.transform(hidden)

    def item_vectors(self) -> Tensor:
        """``[n_items, H]``: row ``i`` is the item with token ``i + N_SPECIAL``."""
        return self.item_table.weight[N_SPECIAL:N_SPECIAL + self.n_items]

    def vectors_of(self, items: Tensor) -> Tensor:
        """``[..., H]`` the vectors of item indices ``items``; a lookup, so its gradient is
        sparse when the item table is (``item_table.sparse``, lazy item updates)."""
        return F.embedding(items + N_SPECIAL, self.item_table.weight, sparse=self.item_table.sparse)

    def score(self, query: Tensor, items: slice = slice(None)) -> Tensor:
        """``[B, len(items)]``: the scores of a slice of the catalogue (all of it by
        default) for query vectors ``[B, H]``, in one matmul."""
        return torch.addmm(self.bias[items], query, self.item_vectors()[items].T)

    def score_each(self, query: Tensor, items: Tensor) -> Tensor:
        """``[B, m]``: each query row's own items ``items`` ``[B, m]`` (item indices),
        scored by the same formula as :meth:`score`."""
        return (self.item_vectors()[items] * query[:, None, :]).sum(-1) + self.bias[items]

    def checked_scores(self, query: Tensor, items: slice) -> Tensor:
        """:meth:`score` as float32 on the query's device; NaN or infinite scores raise
        :class:`~recbert.errors.DivergenceError`."""
        scores = self.score(query, items).float()
        require_finite(scores)
        return scores

    def top_k(self, query: Tensor, k: int, chunk: int, exclude: Optional[ItemSets] = None
              ) -> tuple[Tensor, Tensor]:
        """``(scores, items)``, ``[B, min(k, n_items)]`` float32 and int64 on the CPU: each
        query's best items, best first, tied scores in item (vocabulary) order; items in
        ``exclude`` score -inf. Scored ``chunk`` items at a time, keeping only the ``k``
        best between chunks: memory is ``B x (chunk + k)``."""
        best = (torch.empty(len(query), 0), torch.empty(len(query), 0, dtype=torch.long))
        for items in item_chunks(len(self.bias), chunk):
            scores = self.checked_scores(query, items).cpu()
            if exclude is not None:
                scores.masked_fill_(exclude.mask(items), float("-inf"))
            best = merge_top_k(best, scores, items.start, k)
        return best

    def forward(self, hidden: Tensor) -> Tensor:
        return self.score(self.query(hidden))


class SequenceRecommender(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        embeddings: Optional[nn.Module] = None,
        encoder: Optional[nn.Module] = None,
        scorer: Optional[nn.Module] = None,
        fusion: Optional[nn.Module] = None,
        reuse: Optional[nn.Module] = None,
    ):
        super().__init__()
        if config.n_tokens <= N_SPECIAL:
            raise ConfigError("model.n_tokens is not set: build the model from a vocabulary (n_tokens = len(vocab))")
        if config.hash_buckets < 0 or catalogue_size(config.n_tokens, config.hash_buckets) < 1:
            raise ConfigError(f"model.hash_buckets={config.hash_buckets} must be >= 0 and leave at least one item "
                              f"among model.n_tokens={config.n_tokens} (fill both from the vocabulary)")
        self.config = config
        self.embeddings = embeddings if embeddings is not None else SequenceEmbeddings(config)
        self.encoder = encoder if encoder is not None else Encoder(config)
        self.fusion = fusion if fusion is not None else build_fusion(
            config.fusion, config.layers + 1, config.hidden, config.fusion_layers)
        self.reuse = reuse if reuse is not None else build_reuse_block(
            config.reuse_block, config.hidden, config.dropout, kernel_size=config.reuse_kernel_size,
            heads=config.heads)
        self.scorer = scorer if scorer is not None else ItemScorer(config, self.embeddings.item)
        self.vocab: Optional[ItemVocab] = None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=self.config.init_std, a=-2 * self.config.init_std,
                                  b=2 * self.config.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    @property
    def causal(self) -> bool:
        return self.config.attention == "causal"

    def set_attention(self, causal: bool) -> None:
        """Make ``causal`` (or bidirectional) attention the model's default, as its last
        training stage used it; saved in ``config.json``. The config is replaced, never
        written into: a RunConfig the model was built from stays as it was loaded."""
        self.config = dataclasses.replace(self.config, attention="causal" if causal else "bidirectional")

    def forward(self, input_ids: Tensor, causal: Optional[bool] = None) -> EncoderOutput:
        """All hidden states, plus ``sequence_output``: the fused states passed
        through the reuse block (causal when the attention is), which the scorer and heads
        read."""
        causal = self.causal if causal is None else causal
        out = self.encoder(self.embeddings(input_ids), input_ids, causal)
        out.sequence_output = self.reuse(self.fusion(out.hidden_states, out.padding_mask), out.padding_mask,
                                         causal=causal)
        return out

    # -- inference ---------------------------------------------------------------------
    def inference_rows(self, histories: Sequence[np.ndarray] | np.ndarray) -> Tensor:
        """Left-padded input rows for histories of tokens: the newest ``max_len``
        events for a causal model, the newest ``max_len - 1`` plus [MASK] for a
        bidirectional (cloze) model."""
        if isinstance(histories, np.ndarray) and histories.ndim == 2:
            rows = histories
        else:
            flat, lens = concat_rows(histories)
            ends = np.cumsum(lens)
            width = self.config.max_len - (0 if self.causal else 1)
            rows = left_pad(flat, ends - lens, ends, width)
        if not self.causal:
            rows = np.concatenate([rows, np.full((len(rows), 1), MASK, dtype=np.int64)], axis=1)
        return torch.from_numpy(rows)

    def user_vectors(self, input_ids: Tensor) -> Tensor:
        """``[B, H]`` user embeddings: the scorer's query at the last position."""
        return self.scorer.query(self(input_ids).sequence_output[:, -1])

    def item_vectors(self) -> Tensor:
        return self.scorer.item_vectors()

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence], k: int = 10, exclude_seen: bool = True,
                  chunk: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` original item ids and scores for ad-hoc histories of ORIGINAL
        item ids (oldest first). Unknown ids become [UNK] or their hash bucket; never a
        crash, and a bucket is never recommended. When
        the history leaves fewer than ``k`` items, the last slots hold id None
        and score -inf. Tied scores come in vocabulary order; NaN or infinite scores raise
        :class:`~recbert.errors.DivergenceError`. The catalogue is scored ``chunk`` items
        at a time (None: :func:`~recbert.model.catalogue.item_chunk_size`), so memory
        grows with ``len(histories) x chunk``, not with the catalogue."""
        if self.vocab is None:
            raise CheckpointError("this model has no vocabulary attached; load it with from_pretrained")
        if not 1 <= k <= self.vocab.n_items:
            raise RecbertError(f"k={k} must be between 1 and the number of items ({self.vocab.n_items})")
        if chunk is not None and chunk < 1:
            raise RecbertError(f"chunk={chunk} must be >= 1 items (or None: automatic)")
        tokens = [self.vocab.encode(np.asarray(h, dtype=object if self.vocab.is_string else None)) for h in histories]
        self.eval()
        query = self.user_vectors(self.inference_rows(tokens).to(self.bias_device))
        seen = ItemSets.from_tokens(*concat_rows(tokens), self.vocab.n_items) if exclude_seen else None
        values, order = self.scorer.top_k(query, k, item_chunk_size(len(tokens), chunk), seen)
        values, order = values.numpy(), order.numpy()
        ids = self.vocab.decode(order + N_SPECIAL).astype(object)
        ids[~np.isfinite(values)] = None  # fewer than k unseen items left
        return ids, values

    @property
    def bias_device(self) -> torch.device:
        return next(self.parameters()).device

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, vocab: Optional[ItemVocab] = None,
                        extra: Optional[dict] = None) -> Path:
        """Write config, weights (safetensors) and vocabulary, plus ``extra`` files
        (name -> str or bytes) in the same directory; atomic."""
        vocab = vocab if vocab is not None else self.vocab
        if vocab is None:
            raise CheckpointError("save_pretrained needs the vocabulary (pass vocab= or set model.vocab)")
        if len(vocab) != self.config.n_tokens or vocab.hash_buckets != self.config.hash_buckets:
            raise CheckpointError(f"vocabulary has {len(vocab)} tokens ({vocab.hash_buckets} hash buckets) but "
                                  f"model.n_tokens is {self.config.n_tokens} ({self.config.hash_buckets})")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state.pop("scorer.item_table.weight", None)  # tied to embeddings.item.weight
        with atomic_dir(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n")
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "recbert": "1"})
            vocab.save(tmp / VOCAB_FILE)
            for name, payload in (extra or {}).items():
                if isinstance(payload, bytes):
                    (tmp / name).write_bytes(payload)
                else:
                    (tmp / name).write_text(payload)
            write_manifest(tmp, [CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, *(extra or {})])
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "SequenceRecommender":
        d = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
            if not (d / name).is_file():
                raise CheckpointError(f"model directory {d} has no {name}")
        verify_manifest(d)  # checksums.json: every file as it was saved (folders saved before it: not checked)
        try:
            raw = json.loads((d / CONFIG_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{d / CONFIG_FILE} is not valid JSON: {exc}") from None
        try:
            config = build_section(ModelConfig, raw, "model.", ModelConfig())
        except ConfigError as exc:
            raise CheckpointError(f"{d / CONFIG_FILE}: {exc}") from None
        vocab = ItemVocab.load(d / VOCAB_FILE)
        if len(vocab) != config.n_tokens or vocab.hash_buckets != config.hash_buckets:
            raise CheckpointError(
                f"{d}: vocabulary has {len(vocab)} tokens ({vocab.hash_buckets} hash buckets) but config.json says "
                f"n_tokens={config.n_tokens} (hash_buckets={config.hash_buckets})")
        try:
            state = load_file(str(d / WEIGHTS_FILE), device=map_location)
        except Exception as exc:
            raise CheckpointError(f"{d / WEIGHTS_FILE} is not a readable safetensors file: {exc}") from None
        model = cls(config)
        expected = {k: v.shape for k, v in model.state_dict().items() if k != "scorer.item_table.weight"}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
        if missing or unexpected or wrong:
            detail = "; ".join(
                part for part in (
                    f"missing {missing[:5]}" if missing else "",
                    f"unexpected {unexpected[:5]}" if unexpected else "",
                    ", ".join(f"{k} has shape {tuple(state[k].shape)}, config expects {tuple(expected[k])}" for k in wrong[:5]),
                ) if part
            )
            raise CheckpointError(f"{d / WEIGHTS_FILE} does not match {d / CONFIG_FILE}: {detail}")
        model.load_state_dict(state, strict=False)
        model.vocab = vocab
        model.eval()
        return model

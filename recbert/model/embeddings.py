"""Input embeddings: item + position (+ optional item side features)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recbert.config import ModelConfig
from recbert.data.vocab import PAD


class SequenceEmbeddings(nn.Module):
    """``LayerNorm(item + position + mean(feature values)) -> dropout``.

    Rows are left-padded, so positions are counted back from the last column:
    the newest event always has position ``max_len - 1``.

    Item side features (e.g. brand, categories) are fixed per item: for each
    feature a buffer ``[n_tokens, width]`` lists the item's value indices
    (0 = none) and their embeddings are averaged. The buffers are saved with
    the weights, so a loaded model needs no feature file.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item = nn.Embedding(config.n_tokens, config.hidden, padding_idx=PAD)
        self.position = nn.Embedding(config.max_len, config.hidden)
        self.features = nn.ModuleDict()
        for name, card in config.feature_cardinalities.items():
            width = config.feature_widths.get(name, 1)
            self.features[name] = nn.Embedding(card + 1, config.hidden, padding_idx=0)
            self.register_buffer(f"feature_table_{name}", torch.zeros(config.n_tokens, width, dtype=torch.long))
        self.norm = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def set_feature_table(self, name: str, table: Tensor) -> None:
        """Install the ``[n_tokens, width]`` value-index table of feature ``name``."""
        expected = (self.config.n_tokens, self.config.feature_widths.get(name, 1))
        if tuple(table.shape) != expected:
            raise ValueError(f"feature table {name!r} has shape {tuple(table.shape)}, expected {expected}")
        getattr(self, f"feature_table_{name}").copy_(table)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds model.max_len {self.config.max_len}")
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=input_ids.device)
        x = self.item(input_ids) + self.position(positions)[None]
        for name, emb in self.features.items():
            values = getattr(self, f"feature_table_{name}")[input_ids]  # [B, L, W]
            present = (values > 0).float()
            summed = (emb(values) * present[..., None]).sum(dim=2)
            x = x + summed / present.sum(dim=2, keepdim=True).clamp(min=1.0)
        return self.dropout(self.norm(x))
